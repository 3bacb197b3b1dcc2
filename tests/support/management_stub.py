"""A stand-in for the RabbitMQ management API on 127.0.0.1 that answers every request with the
status and JSON body a test sets: how a test injects the answers a real broker gives only at
awkward moments (a queue object without its counts right after a restart, a 401)."""

from __future__ import annotations

import http.server
import json
import threading

from virtscale.naming import worker_consumer_tag


def queue_body(
    name: str,
    ready: int | None = 0,
    unacked: int | None = 0,
    consuming: tuple[str, ...] | None = (),
    publish_rate: float | None = 0.0,
    ack_rate: float | None = 0.0,
) -> dict:
    """A queue object as /api/queues/VHOST/NAME returns it; a field given as None is left out,
    as RabbitMQ leaves it out while it has no statistics for the queue."""
    body: dict = {"name": name, "vhost": "/", "durable": True, "type": "quorum"}
    if ready is not None:
        body["messages_ready"] = ready
    if unacked is not None:
        body["messages_unacknowledged"] = unacked
    if consuming is not None:
        body["consumers"] = len(consuming)
        body["consumer_details"] = [
            {"consumer_tag": worker_consumer_tag(worker, "0"), "queue": {"name": name}}
            for worker in consuming
        ]
    stats = {}
    if publish_rate is not None:
        stats["publish_details"] = {"rate": publish_rate}
    if ack_rate is not None:
        stats["ack_details"] = {"rate": ack_rate}
    if stats:
        body["message_stats"] = stats
    return body


class ManagementStub:
    def __init__(self, body: dict | None = None, status: int = 200):
        self.body = body if body is not None else {}
        self.status = status
        self.requests = 0
        #: (method, path, JSON body or None) of every request.
        self.calls: list[tuple[str, str, object]] = []
        self._closed = False
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                sent = json.loads(self.rfile.read(length)) if length else None
                stub.calls.append((self.command, self.path, sent))
                payload = json.dumps(stub.body).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_DELETE = do_GET

            def log_message(self, *_args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        """Stop answering: the port then refuses connections, as an API that is down."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
