"""Who may publish a result under which worker name: pure policy over the broker-validated
AMQP ``user_id`` of a result message.

The broker refuses a publish whose ``user_id`` is not the connection's user, so the property
names the account that published. Accounts named ``worker.<domain>`` (virtscale.naming.vm_user)
are pool VMs' own, made by the provisioner: each may speak only for its domain. Any other account
is one the operator holds on a host (the shared ``worker`` of `make worker`, a test's account):
its results are taken under the name they claim. A result without a ``user_id`` is taken from no
one: a guest could otherwise leave it out and claim any name.
"""

from __future__ import annotations

from virtscale.naming import VM_USER_PREFIX

#: The start of every reason this module gives; `virtscale-collector stats` counts the dead
#: letters whose reason starts with it.
IMPOSTOR_REASON = "publisher mismatch"


def publisher_problem(claimed_worker: str, user_id: str | None) -> str | None:
    """Why a result claiming ``claimed_worker`` must not be stored, or None when it may be."""
    if not user_id:
        return f"{IMPOSTOR_REASON}: no user_id, so no validated publisher"
    if user_id.startswith(VM_USER_PREFIX):
        domain = user_id[len(VM_USER_PREFIX) :]
        if claimed_worker != domain:
            return f"{IMPOSTOR_REASON}: result claims worker {claimed_worker!r} but {user_id!r} published it"
    return None
