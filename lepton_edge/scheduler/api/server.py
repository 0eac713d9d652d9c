"""Serving the API: uvicorn in a background thread, on a socket bound before it starts."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.api.app import DEFAULT_ALLOWED_HOSTS, DEFAULT_MAX_BODY_BYTES, create_app

log = logging.getLogger("lepton_edge.scheduler.api")


class ApiServer:
    """A running API: ``host``, ``port`` (the bound one), ``url``; :meth:`stop` shuts it down."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, finish the ones in flight, and join the server thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(
            f"api.host {host!r}: cannot resolve it ({e}); use an address such as 127.0.0.1"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"api: cannot listen on {host}:{port}: {e.strerror or e}; pick another api.port "
            "(0 picks a free one) or stop the program using it"
        ) from None
    return sock


def serve(
    service: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    startup_timeout: float = 15.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: list[str] | None = None,
) -> ApiServer:
    """Serve the API and dashboard of ``service`` from a background thread; port 0 picks a free port.

    ``allowed_hosts`` (``Host`` header values) defaults to ``host``, localhost and 127.0.0.1.
    """
    hosts = allowed_hosts if allowed_hosts is not None else list(dict.fromkeys([host, *DEFAULT_ALLOWED_HOSTS]))
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    app = create_app(service, max_body_bytes=max_body_bytes, allowed_hosts=hosts)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"scheduler-api-{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise ConfigError(f"api: the HTTP server on {host}:{bound_port} did not start; see the log above")
        time.sleep(0.01)
    log.info("scheduler API and dashboard on http://%s:%d/", host, bound_port)
    return ApiServer(server, thread, host, bound_port)
