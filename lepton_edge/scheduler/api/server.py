"""Serving the API: uvicorn in a background thread, on a socket bound before it starts, over TLS (and mTLS)
when given certificates."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from lepton_edge.config.scheduler import is_loopback_host
from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.api.app import DEFAULT_ALLOWED_HOSTS, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_LIMIT, create_app

log = logging.getLogger("lepton_edge.scheduler.api")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for HTTPS: the server's certificate and key; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS), else the handshake fails."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        for name, path in (("api.tls_cert", self.cert), ("api.tls_key", self.key), ("api.client_ca", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name}: {path} is not a readable file (deploy/make-certs.sh makes them)")

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


def check_insecure_local(host: str) -> None:
    """Refuses unauthenticated access (``--insecure-local``) on anything but a loopback address."""
    if not is_loopback_host(host):
        raise ConfigError(
            f"api.insecure_local (--insecure-local) turns authentication off, so it is allowed only on a loopback "
            f"address (127.0.0.1, ::1, localhost), not api.host {host!r}; create a token instead: "
            "lepton-edge scheduler token create --config scheduler.yaml --name NAME --role admin"
        )


class ApiServer:
    """A running API: ``host``, ``port`` (the bound one), ``url``; :meth:`stop` shuts it down."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int, *, tls: bool = False) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.tls = tls

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

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
    insecure_local: bool = False,
    rate_limit: tuple[float, int] = DEFAULT_RATE_LIMIT,
    tls: TlsFiles | None = None,
) -> ApiServer:
    """Serve the API and dashboard of ``service`` from a background thread; port 0 picks a free port.

    ``allowed_hosts`` (``Host`` header values) defaults to ``host``, localhost and 127.0.0.1. Requests need
    API tokens unless ``insecure_local`` (loopback ``host`` only, else :class:`ConfigError`); HTTPS with ``tls``.
    """
    if insecure_local:
        check_insecure_local(host)
    if tls is not None:
        tls.check()
    hosts = allowed_hosts if allowed_hosts is not None else list(dict.fromkeys([host, *DEFAULT_ALLOWED_HOSTS]))
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    app = create_app(
        service, max_body_bytes=max_body_bytes, allowed_hosts=hosts, insecure_local=insecure_local,
        rate_limit=rate_limit,
    )
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, **(tls.uvicorn_options() if tls else {})
    )
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
    running = ApiServer(server, thread, host, bound_port, tls=tls is not None)
    log.info("scheduler API and dashboard on %s/", running.url)
    if insecure_local:
        log.warning(
            "INSECURE: the scheduler API at %s accepts every request without a token, as the admin "
            "'insecure-local' (--insecure-local, for demos on this machine only); requests are still audited",
            running.url,
        )
    return running
