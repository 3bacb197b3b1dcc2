"""The one reconnect wait: capped, jittered exponential backoff, for the broker and libvirt alike.

Imports only tenacity and virtscale.defaults: the hypervisor module uses it without pika,
the worker image (Debian 12's python3-tenacity 8.2.1) with pika.
"""

from __future__ import annotations

from collections.abc import Callable

import tenacity

from virtscale import defaults


def reconnect_wait() -> Callable[[tenacity.RetryCallState], float]:
    """tenacity's wait for attempt n: RECONNECT_INITIAL * 2**(n-1) plus up to RECONNECT_JITTER
    seconds, capped at RECONNECT_MAX."""
    limits = {"max": defaults.RECONNECT_MAX, "jitter": defaults.RECONNECT_JITTER}
    try:
        return tenacity.wait_exponential_jitter(multiplier=defaults.RECONNECT_INITIAL, **limits)
    except TypeError:  # Debian 12's tenacity 8.2 has no `multiplier` yet; 9.x deprecates `initial`
        return tenacity.wait_exponential_jitter(initial=defaults.RECONNECT_INITIAL, **limits)
