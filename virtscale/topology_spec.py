"""What the broker must hold for one job queue: its queues with their arguments, the policy on
the job queue, and the least-privilege users with their rights. The one place these facts are
written.

virtscale.broker declares the queues from here, `virtscale-broker declare` sets the policy from
here, deploy/broker_accounts.py grants the rights from here, and deploy/rabbitmq/definitions.json
is generated from here (`virtscale-broker definitions`). Pure data on the standard library only:
it ships inside the worker VM image, which has Debian's python3-pika and nothing else of PyPI's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from virtscale import defaults
from virtscale.naming import HOST_WORKER_USER, LEASE_PREFIX, QueueNames, vm_user

#: The account that makes and removes the pool VMs' own users.
PROVISIONER = "provisioner"

#: A permission regex that matches no resource at all.
NOTHING = "^$"

#: The producer and the collector publish to the default exchange (the routing key is the queue
#: name), so "write" on it is all they need. It reaches every queue of the vhost: workers, which
#: run in VMs that may be compromised, get the results exchange instead.
DEFAULT_EXCHANGE = r"^amq\.default$"

#: Every pool's lease queue (virtscale.naming.lease_queue): a scaler declares the one of its pool,
#: exclusively, to lead; whatever the pool's name, nothing else matches.
LEASES = f"^{re.escape(LEASE_PREFIX)}/.+$"

#: Quorum queues: replicated, durable, and they count deliveries (x-delivery-limit needs them).
QUORUM = {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class Queue:
    """One durable queue and the arguments it is declared with (they must match on redeclare)."""

    name: str
    arguments: Mapping[str, object]
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True)
class Exchange:
    """A durable direct exchange and the queues bound to it, each under its own name as the
    routing key: a publish reaches one of them or none (returned as unroutable)."""

    name: str
    bound: tuple[str, ...]
    type: str = "direct"
    durable: bool = True


@dataclass(frozen=True)
class Policy:
    """A RabbitMQ policy: settings applied to the queues whose names match ``pattern``. Unlike a
    queue's arguments, which are fixed when it is first declared (another value fails the
    redeclare with PRECONDITION_FAILED), a policy can be set or changed on a queue that exists."""

    name: str
    pattern: str
    definition: Mapping[str, object]
    apply_to: str = "queues"
    #: Of the policies matching one queue only the highest-priority one applies: ours outranks a
    #: catch-all policy left at the default 0.
    priority: int = 10


@dataclass(frozen=True)
class User:
    """A broker account and its rights in the vhost: regexes over resource names, as RabbitMQ
    takes them, and management tags."""

    name: str
    configure: str = NOTHING
    write: str = NOTHING
    read: str = NOTHING
    tags: tuple[str, ...] = field(default=())

    def permissions(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


def exactly(name: str) -> str:
    """A permission regex that matches the resource ``name`` and nothing else."""
    return f"^{re.escape(name)}$"


def queues(names: QueueNames, delivery_limit: int = defaults.DELIVERY_LIMIT) -> tuple[Queue, ...]:
    """The queues in the order to declare them: the dead-letter queue first, so the job queue's
    dead letters have somewhere to go from its first message on."""
    return (
        Queue(names.dead, dict(QUORUM)),
        Queue(names.results, dict(QUORUM)),
        Queue(
            names.jobs,
            {
                **QUORUM,
                # A job delivered this many times without an ack is poison: dead-letter it.
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": names.dead,
            },
        ),
    )


def exchanges(names: QueueNames) -> tuple[Exchange, ...]:
    """The results exchange: the workers' only way in, to the results and dead-letter queues."""
    return (Exchange(names.results_exchange, (names.results, names.dead)),)


def policies(names: QueueNames) -> tuple[Policy, ...]:
    """The job queue's policy: dead-letter at least once. By default a quorum queue dead-letters
    at most once, so a message dropped at the delivery limit while the dead-letter queue cannot
    take it (its leader being elected, a node down, the queue gone) is lost. At least once, the
    job queue keeps it until the dead-letter queue has confirmed it; RabbitMQ does that only with
    overflow reject-publish (a queue at a length limit refuses new publishes, which the producer
    republishes later, instead of dropping its oldest messages)."""
    return (
        Policy(
            f"virtscale-{names.jobs}",
            exactly(names.jobs),
            {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"},
        ),
    )


def users(names: QueueNames) -> tuple[User, ...]:
    """Each component's account: it may publish and consume what its job needs, declare nothing."""
    return (
        User("producer", write=DEFAULT_EXCHANGE),
        # The shared account of a worker run on a host; pool VMs get their own (vm_user_rights).
        User(HOST_WORKER_USER, write=exactly(names.results_exchange), read=exactly(names.jobs)),
        # Reads the dead letters too, without taking them: `stats` counts refused results.
        User(
            "collector",
            write=DEFAULT_EXCHANGE,
            read=f"^({re.escape(names.results)}|{re.escape(names.dead)})$",
        ),
        # The scaler watches through the management API (the monitoring tag). Over AMQP it only
        # declares its pool's lease queue and probes whether a lease is held, by a mandatory
        # publish to the default exchange that comes back when the queue is not there.
        User("scaler", configure=LEASES, write=DEFAULT_EXCHANGE, tags=("monitoring",)),
        # Creates and deletes the pool VMs' own users and closes their connections (management
        # API only: the administrator tag is the least RabbitMQ has for that); no AMQP rights.
        User(PROVISIONER, tags=("administrator",)),
    )


def vm_user_rights(names: QueueNames, domain: str) -> User:
    """A pool VM's own account: consume its jobs, publish to the results exchange (so only into
    the results and dead-letter queues), declare nothing. The collector checks that its results
    claim its own name (the message's user_id, which the broker validates)."""
    return User(vm_user(domain), write=exactly(names.results_exchange), read=exactly(names.jobs))


def definitions(
    names: QueueNames, delivery_limit: int = defaults.DELIVERY_LIMIT, vhost: str = "/"
) -> dict[str, list]:
    """A RabbitMQ definitions document (management UI "Import definitions", or
    `rabbitmqctl import_definitions`). Users come without passwords: set them afterwards, as
    deploy/broker_accounts.py does."""
    return {
        "vhosts": [{"name": vhost}],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": queue.durable,
                "auto_delete": queue.auto_delete,
                "arguments": dict(queue.arguments),
            }
            for queue in queues(names, delivery_limit)
        ],
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type,
                "durable": exchange.durable,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for exchange in exchanges(names)
        ],
        "bindings": [
            {
                "source": exchange.name,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": queue,
                "arguments": {},
            }
            for exchange in exchanges(names)
            for queue in exchange.bound
        ],
        "policies": [
            {
                "vhost": vhost,
                "name": policy.name,
                "pattern": policy.pattern,
                "apply-to": policy.apply_to,
                "definition": dict(policy.definition),
                "priority": policy.priority,
            }
            for policy in policies(names)
        ],
        "users": [
            {
                "name": user.name,
                "password_hash": "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": list(user.tags),
            }
            for user in users(names)
        ],
        "permissions": [{"user": user.name, "vhost": vhost, **user.permissions()} for user in users(names)],
    }
