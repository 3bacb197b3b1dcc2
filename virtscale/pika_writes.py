"""One send() for everything pika has buffered, instead of one per frame.

pika's asynchronous transports (pika 1.2, the guest's, to 1.4) queue each marshalled frame as
its own chunk and send the chunks one send() each when the socket is writable: three system
calls for every message (method, header and body frames), plus one for every ack. A worker
publishing results and acking jobs spends most of its own CPU in those calls (measured at
bcrypt cost 4: three sends a job, about half of the I/O loop's time). Joining the queued chunks
first sends the same bytes, in the same order, in one call (one TLS record over TLS).

``install()`` wraps the transports' ``_produce``; it changes nothing where a pika version
lacks what it wraps.
"""

from __future__ import annotations

import functools

from pika.adapters.utils import io_services_utils

#: Bytes after which no further chunk is joined (the last one joined may pass it): a larger
#: backlog (a slow link) goes in several sends.
JOIN_LIMIT = 256 * 1024


def _joined(produce):
    @functools.wraps(produce)
    def produce_joined(transport) -> None:
        buffers = getattr(transport, "_tx_buffers", None)
        if buffers is not None and len(buffers) > 1:
            chunks, size = [], 0
            while buffers and size < JOIN_LIMIT:
                chunk = buffers.popleft()
                chunks.append(chunk)
                size += len(chunk)
            buffers.appendleft(b"".join(chunks))
        produce(transport)

    produce_joined.virtscale_joined = True
    return produce_joined


def install() -> None:
    """Idempotent."""
    for name in ("_AsyncTransportBase", "_AsyncSSLTransport"):
        transport = getattr(io_services_utils, name, None)
        produce = vars(transport).get("_produce") if transport is not None else None
        if produce is not None and not getattr(produce, "virtscale_joined", False):
            transport._produce = _joined(produce)
