"""The audit trail: every change through the API (POST, PUT, PATCH, DELETE under ``/api``) is written to the
store's append-only ``audit_log``, refused attempts included, and ``GET /api/audit`` (admin) serves it.

An entry says who (token id and name, or ``insecure-local``; ``anonymous`` when no valid token came), what
(``POST /api/workloads``), the target (the id in the path or the one created), when, from where (remote
address), the status code and, for a refusal, the reason. Reads are not audited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lepton_edge.scheduler.api.auth import Admin
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import AuditOut
from lepton_edge.scheduler.auth import Principal

log = logging.getLogger("lepton_edge.scheduler.api")

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANONYMOUS = "anonymous"
THROTTLED_ENTRY_EVERY_S = 1.0
"""A caller refused with 429 gets at most one audit entry per this many seconds (with the count it stands
for), so a flood cannot turn into as many writes to the audit log."""

router = APIRouter(prefix="/api/audit", tags=["access"])


@router.get("", response_model=list[AuditOut], dependencies=[Admin])
def list_audit(
    service: Service,
    since: Annotated[float | None, Query(ge=0, description="Only entries after this Unix time.")] = None,
    actor: Annotated[
        str | None, Query(max_length=200, description="Only entries whose actor starts with this (e.g. token:<id>).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Newest entries to return.")] = 200,
) -> list[AuditOut]:
    """The audit log, oldest first: the newest ``limit`` entries matching the filters."""
    return [AuditOut(**asdict(e)) for e in service.store.list_audit(since=since, actor=actor, limit=limit)]


class AuditMiddleware:
    """Writes one audit entry per change request as its answer starts (the status is known then), before
    the caller receives it."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app = app
        self.service = service
        self._throttled: dict[str, tuple[float, int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        recorded = False

        async def record_then_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True  # before the caller sees the answer: nothing is acknowledged unaudited
                await anyio.to_thread.run_sync(self._record, scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_then_send)
        finally:
            if not recorded:  # no answer started (the connection broke, or a bug)
                await anyio.to_thread.run_sync(self._record, scope, 500)

    def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        actor = principal.actor if principal else ANONYMOUS
        remote = scope["client"][0] if scope.get("client") else None
        detail: dict[str, Any] = dict(state.get("audit_detail") or {})
        if state.get("audit_refusal"):
            detail["reason"] = state["audit_refusal"]
        if status == 429 and not self._due(f"{actor}@{remote}", detail):
            return
        path_params = scope.get("path_params") or {}
        target = state.get("audit_target") or (",".join(str(v) for v in path_params.values()) or None)
        try:
            self.service.store.add_audit(
                actor=actor,
                role=principal.role if principal else None,
                action=f"{scope['method']} {scope['path']}",
                target=target,
                status=status,
                remote=remote,
                detail=detail,
            )
        except Exception as e:  # the response is already sent; the log keeps what the store could not
            log.error(
                "audit entry lost (%s %s by %s from %s, status %d): %s",
                scope["method"],
                scope["path"],
                actor,
                remote,
                status,
                e,
            )

    def _due(self, key: str, detail: dict[str, Any]) -> bool:
        """Whether a 429 of ``key`` gets an entry now; the entry counts the ones left out before it."""
        now = time.monotonic()
        last, skipped = self._throttled.get(key, (-THROTTLED_ENTRY_EVERY_S, 0))
        if now - last < THROTTLED_ENTRY_EVERY_S:
            self._throttled[key] = (last, skipped + 1)
            return False
        if len(self._throttled) > 10_000:
            self._throttled.clear()
        self._throttled[key] = (now, 0)
        detail["refused_since_last_entry"] = skipped
        return True
