"""virtscale-broker: declare (or delete) the queues every component relies on and the job
queue's policy, or print them, with the users and their rights, as a RabbitMQ definitions file.

Run declare once with an account that may configure queues and set policies (make broker does,
as guest from this machine); the components themselves only check that the queues exist. The
queues go over AMQP, the policy through the management API (AMQP cannot set one). On a cluster,
give every node's URLs: any node that answers will do. Everything here comes from
virtscale.topology_spec.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import urllib.parse

from virtscale import defaults, topology_spec
from virtscale.broker import BrokerRefused, BrokerUnavailable, declare_topology, delete_topology
from virtscale.cli_support import broker_nodes, resolve_and_check_amqp_urls
from virtscale.config import (
    MAX_DELIVERY_LIMIT,
    OneLineParser,
    add_common_options,
    add_management_options,
    bounded_int,
    broker_identity,
    configure_logging,
    queue_names,
    resolve_management_urls,
)
from virtscale.management import ManagementApi, ManagementError
from virtscale.naming import QueueNames

log = logging.getLogger(__name__)

PROG = "virtscale-broker"

COMMANDS = {
    "declare": "create the queues and the job queue's policy (idempotent)",
    "delete": "delete the queues, every message in them and the policy (asks first)",
    "definitions": "print the queues, users and rights as a RabbitMQ definitions file",
}

EXAMPLES = """\
examples:
  virtscale-broker declare --queue licenses
  virtscale-broker declare --amqp-url amqp://node1/%2F,amqp://node2/%2F --management-url http://node1:15672
  virtscale-broker delete --queue bench --yes
  virtscale-broker definitions > deploy/rabbitmq/definitions.json
"""


def build_parser() -> OneLineParser:
    commands = "\n".join(f"  {name:<12} {what}" for name, what in COMMANDS.items())
    parser = OneLineParser(
        prog=PROG,
        description=f"{__doc__}\ncommands:\n{commands}",
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "command",
        metavar="COMMAND",
        choices=list(COMMANDS),
        help=f"{', '.join(COMMANDS)} (see above)",
    )
    add_common_options(parser)
    add_management_options(parser)
    parser.add_argument(
        "--delivery-limit",
        type=bounded_int(1, MAX_DELIVERY_LIMIT),
        metavar="N",
        default=defaults.DELIVERY_LIMIT,
        help=f"deliveries of a job before it is dead-lettered, 1-{MAX_DELIVERY_LIMIT} (default: %(default)s)",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="delete without asking (needed when not run on a terminal)",
    )
    return parser


def definitions_text(names: QueueNames, delivery_limit: int) -> str:
    """The definitions file exactly as committed in deploy/rabbitmq/definitions.json."""
    return json.dumps(topology_spec.definitions(names, delivery_limit), indent=2) + "\n"


def confirmed(names: QueueNames) -> bool:
    """Ask on the terminal; the queue name or 'yes' goes on, anything else (or none) does not."""
    queues = ", ".join(queue.name for queue in reversed(topology_spec.queues(names)))
    sys.stderr.write(
        f"{PROG}: this deletes {queues} and every message in them.\n"
        f"Type the queue name ({names.jobs}) or 'yes' to go on: "
    )
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
        sys.stderr.write("\n")
    return answer.strip() in (names.jobs, "yes")


def policy_path(vhost: str, name: str) -> str:
    return f"/api/policies/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"


def set_policies(api: ManagementApi, vhost: str, names: QueueNames) -> None:
    """Set (or update) the job queue's policy; before the queues, so it holds from their start."""
    for policy in topology_spec.policies(names):
        body = {
            "pattern": policy.pattern,
            "definition": dict(policy.definition),
            "apply-to": policy.apply_to,
            "priority": policy.priority,
        }
        api.change("PUT", policy_path(vhost, policy.name), f"setting policy {policy.name}", json=body)


def delete_policies(api: ManagementApi, vhost: str, names: QueueNames) -> None:
    for policy in topology_spec.policies(names):
        path, what = policy_path(vhost, policy.name), f"deleting policy {policy.name}"
        response = api.change("DELETE", path, what, missing_ok=True)
        gone = response.status_code == 404
        print(
            f"policy {policy.name}: not there, nothing to delete" if gone else f"deleted policy {policy.name}"
        )


def report_deleted(held: dict[str, int | None]) -> None:
    for queue, messages in held.items():
        if messages is None:
            print(f"{queue}: not there, nothing to delete")
        else:
            print(f"deleted {queue} ({messages} message{'' if messages == 1 else 's'})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = queue_names(args)
    if args.command == "definitions":
        sys.stdout.write(definitions_text(names, args.delivery_limit))
        return 0
    urls = resolve_and_check_amqp_urls(parser, args)
    auth, vhost = broker_identity(urls[0])
    urls = broker_nodes(urls, args)
    api = ManagementApi(resolve_management_urls(parser, args), auth, verify=args.management_ca or True)
    if args.command == "delete" and not args.yes:
        if not sys.stdin.isatty():
            parser.error("delete removes the queues and their messages: pass --yes to confirm")
        if not confirmed(names):
            print(f"{PROG}: not confirmed; nothing deleted", file=sys.stderr)
            return 1
    configure_logging(args.log_level, args.log_format)
    # Named in the management UI like every other virtscale connection.
    connection_name = f"{PROG} {socket.gethostname()} {names.jobs}"
    try:
        if args.command == "declare":
            set_policies(api, vhost, names)
            declare_topology(urls, names, args.delivery_limit, connection_name)
            for policy in topology_spec.policies(names):
                log.info("policy %s on %s: %s", policy.name, names.jobs, dict(policy.definition))
        else:
            report_deleted(delete_topology(urls, names, connection_name))
            delete_policies(api, vhost, names)
    except (BrokerRefused, BrokerUnavailable, ManagementError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
