"""A small JSON client for the scheduler API that sends its bearer token, and tokens made on a real store."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from lepton_edge.scheduler.auth import TokenManager
from lepton_edge.scheduler.store import Store


def make_token(store: Store, role: str = "admin", name: str | None = None) -> str:
    """A new API token of ``role`` on ``store`` (its full text, ready for ``Authorization: Bearer``)."""
    return TokenManager(store, "cli:tests").create(name or f"test-{role}", role)[1]


class ApiClient:
    """``call(method, path, body) -> (status, decoded body)``, with ``Authorization: Bearer <token>`` when
    it has a token; the headers of the last answer are kept in :attr:`last_headers` (lower-case names)."""

    def __init__(self, base: str, token: str | None = None, *, context: ssl.SSLContext | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.context = context
        self.last_headers: dict[str, str] = {}

    @classmethod
    def admin(cls, server: Any, store: Store, role: str = "admin") -> ApiClient:
        """A client of a running ``ApiServer`` with a new token of ``role``."""
        return cls(server.url, make_token(store, role))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                status, payload, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            status, payload, headers = e.code, e.read(), e.headers
        self.last_headers = {name.lower(): value for name, value in headers.items()}
        if not payload:
            return status, None
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode()

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)
