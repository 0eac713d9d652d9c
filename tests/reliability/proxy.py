"""A loopback TCP proxy that can black-hole its connections, to cut the network between agent and broker.

``cut()`` turns every open connection into a black hole: both sockets stay open, every byte read from
either side is discarded, and neither side hears that the other closed (no FIN or RST crosses). New
connections accepted during the cut are black holes from the start (never connected upstream). That is
what a dead link or a silent firewall looks like to TCP: only a protocol keepalive can notice it.

``resume()`` forwards again for new connections. A connection that was black-holed stays so until an
end closes it: bytes were dropped in the middle of its stream, so it could never carry MQTT again (a
real outage would have made TCP give up on it the same way).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    upstream: socket.socket | None
    accepted_at: float
    black_hole: bool = False
    closed: set[str] = field(default_factory=set)


class BlackholeProxy:
    """Listens on 127.0.0.1 (``port``) and forwards to ``target_host:target_port``. A context manager."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._cut = False
        self._closing = threading.Event()
        self.accepted: list[tuple[float, bool]] = []
        """(monotonic time, black hole from the start) of every accepted connection."""
        self.discarded_bytes = 0
        self._thread = threading.Thread(target=self._accept_loop, name="blackhole-proxy", daemon=True)
        self._thread.start()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Black-hole every open connection and every new one until :meth:`resume`."""
        with self._lock:
            self._cut = True
            for conn in self._connections:
                conn.black_hole = True

    def resume(self) -> None:
        """Forward new connections again (black-holed ones stay black holes)."""
        with self._lock:
            self._cut = False

    def connections_since(self, since: float) -> list[tuple[float, bool]]:
        with self._lock:
            return [c for c in self.accepted if c[0] >= since]

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                cut = self._cut
                self.accepted.append((time.monotonic(), cut))
            upstream = None
            if not cut:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()  # broker down: refuse, as a direct connection would be refused
                    continue
            conn = _Connection(client, upstream, time.monotonic(), black_hole=cut)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._pump, args=(conn, "client"), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(conn, "upstream"), daemon=True).start()

    def _pump(self, conn: _Connection, side: str) -> None:
        source = conn.client if side == "client" else conn.upstream
        other = conn.upstream if side == "client" else conn.client
        assert source is not None
        while True:
            try:
                data = source.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            if conn.black_hole or other is None:
                with self._lock:
                    self.discarded_bytes += len(data)
                continue
            try:
                other.sendall(data)
            except OSError:
                break
        self._close_side(conn, side)

    def _close_side(self, conn: _Connection, side: str) -> None:
        """One end closed: close it; pass the close on only while the connection still forwards."""
        with self._lock:
            conn.closed.add(side)
            both = conn.black_hole is False or len(conn.closed) == (2 if conn.upstream is not None else 1)
            if both:
                with contextlib.suppress(ValueError):
                    self._connections.remove(conn)
        sockets = (
            [conn.client, conn.upstream] if both else [conn.client if side == "client" else conn.upstream]
        )
        for sock in sockets:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closing.set()
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            for sock in (conn.client, conn.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
