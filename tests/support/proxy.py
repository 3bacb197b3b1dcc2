"""A loopback TCP proxy that a test can cut: every live connection dropped at once,
new ones refused for a while, then let through again. Or freeze: the connections stay open but
nothing passes either way, not even their closing, as in a network partition."""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttableProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._refusing = threading.Event()
        self._closed = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.connections_made = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F?heartbeat=5"

    def cut(self) -> None:
        """Drop every live connection and refuse new ones until ``restore``."""
        self._refusing.set()
        with self._lock:
            live, self._live = self._live, []
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._refusing.clear()

    def freeze(self) -> None:
        """Hold every byte, and every close, of the live connections until ``thaw``."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.thaw()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._live += [client, upstream]
                self.connections_made += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self._flowing.wait()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._flowing.wait()
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
