"""``/api/tokens`` (admin): create, list and revoke API tokens; ``/api/whoami``: the caller and its role."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request

from lepton_edge.scheduler.api.auth import Admin, CallerAdmin, CallerViewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import TokenCreate, TokenCreated, TokenOut, WhoAmI
from lepton_edge.scheduler.auth import INSECURE_LOCAL, ApiToken, TokenManager

router = APIRouter(tags=["access"])

TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The token's 12-hex-digit id.")]


def _out(token: ApiToken) -> TokenOut:
    fields = asdict(token)
    fields.pop("secret_hash")
    return TokenOut(**fields)


@router.get("/api/whoami", response_model=WhoAmI)
def whoami(principal: CallerViewer) -> WhoAmI:
    """Who the API takes the caller for, and with which role."""
    return WhoAmI(actor=principal.actor, role=principal.role, insecure_local=principal.actor == INSECURE_LOCAL)


@router.get("/api/tokens", response_model=list[TokenOut], dependencies=[Admin])
def list_tokens(service: Service) -> list[TokenOut]:
    """Every token, revoked ones included; never their secrets."""
    return [_out(t) for t in service.store.list_api_tokens()]


@router.post("/api/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, request: Request, service: Service, caller: CallerAdmin) -> TokenCreated:
    """Create a token; its secret is in this answer only (the store keeps its hash)."""
    token, secret = TokenManager(service.store, caller.actor, audited=False).create(body.name, body.role)
    request.state.audit_target = token.token_id
    request.state.audit_detail = {"name": body.name, "role": body.role}
    return TokenCreated(token=_out(token), secret=secret)


@router.delete("/api/tokens/{token_id}", status_code=204, dependencies=[Admin])
def revoke_token(token_id: TokenIdPath, service: Service) -> None:
    """Revoke a token: its next request gets 401."""
    if not service.store.revoke_api_token(token_id, time.time()):
        raise HTTPException(404, f"no active API token {token_id!r}; GET /api/tokens lists them")
