"""An optional Prometheus endpoint: ``GET /metrics`` in the text exposition format (version 0.0.4).

A small ``http.server`` on its own thread, bound to 127.0.0.1 unless configured otherwise; the
metrics are built at scrape time by a callable, so nothing is computed between scrapes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lepton_edge.core.errors import ConfigError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class MetricsText:
    """Builds one exposition: each metric family once, with its HELP and TYPE lines."""

    def __init__(self, prefix: str = "lepton_") -> None:
        self.prefix = prefix
        self._lines: list[str] = []
        self._declared: set[str] = set()

    def _declare(self, name: str, kind: str, help_text: str) -> str:
        full = self.prefix + name
        if full not in self._declared:
            self._declared.add(full)
            self._lines.append(f"# HELP {full} {_escape(help_text)}")
            self._lines.append(f"# TYPE {full} {kind}")
        return full

    def _sample(self, name: str, value: float, labels: dict[str, str] | None) -> None:
        label_text = ""
        if labels:
            label_text = "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"
        self._lines.append(f"{name}{label_text} {_format_value(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._sample(self._declare(name, "gauge", help_text), value, labels)

    def counter(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        """``name`` should end in ``_total``."""
        self._sample(self._declare(name, "counter", help_text), value, labels)

    def summary(
        self,
        name: str,
        help_text: str,
        quantiles: Iterable[tuple[float, float]],
        count: int,
        total: float,
        labels: dict[str, str] | None = None,
    ) -> None:
        full = self._declare(name, "summary", help_text)
        labels = labels or {}
        for q, value in quantiles:
            self._sample(full, value, {**labels, "quantile": repr(q)})
        self._sample(f"{full}_sum", total, labels or None)
        self._sample(f"{full}_count", count, labels or None)

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


class PrometheusExporter:
    """Serves ``render()`` at ``http://host:port/metrics`` on a daemon thread. Port 0 picks a free port."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.render = render
        self.host = host
        self.requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`)."""
        return self._server.server_address[1] if self._server else self.requested_port

    def start(self) -> PrometheusExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._send(404, "not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
                    return
                try:
                    body = exporter.render()
                except Exception as e:
                    log.exception("building the metrics failed")
                    self._send(500, f"building the metrics failed: {type(e).__name__}\n", "text/plain")
                    return
                exporter.scrapes += 1
                self._send(200, body, CONTENT_TYPE)

            def _send(self, status: int, text: str, content_type: str) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics %s: " + format, self.client_address[0], *args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        except OSError as e:
            raise ConfigError(
                f"agent.prometheus_port: cannot listen on {self.host}:{self.requested_port}: {e}; "
                "choose a free port or set prometheus_port: null"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="lepton-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("Prometheus metrics at http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
