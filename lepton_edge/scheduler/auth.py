"""Who may call the scheduler's API: roles, API tokens, per-token rate limits and the audit record.

No web framework here: ``scheduler/api/auth.py`` turns these into FastAPI dependencies, and the CLI
(``lepton-edge scheduler token``) uses :class:`TokenManager` directly on the store.

- Roles, each allowing what the one below allows: ``viewer`` reads, ``operator`` changes workloads,
  device groups, commands, rollouts and assignments, ``admin`` manages tokens and settings and reads the
  audit log.
- A token reads ``lep_<id>_<secret>``: the 12-hex-digit id is shown in lists and the audit log, the secret
  (256 random bits from :mod:`secrets`) is printed once at creation and stored only as its SHA-256.
- Every request spends from its token's bucket (:class:`RateLimiter`); refused and anonymous attempts
  spend from their remote address's much smaller bucket (:data:`FAILED_ATTEMPTS`), so failures can
  neither guess at speed nor flood the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from lepton_edge.scheduler.store import Store

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Roles from least to most trusted; each allows everything the ones before it allow."""

TOKEN_PREFIX = "lep_"
TOKEN_ID_HEX = 12
SECRET_BYTES = 32
INSECURE_LOCAL = "insecure-local"
"""The actor of every request on an API started with ``--insecure-local`` (no token needed)."""
FAILED_ATTEMPTS = (1.0, 20)
"""Refused attempts (401) allowed per remote address: per second, burst; beyond, 429."""
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}(?P<id>[0-9a-f]{{{TOKEN_ID_HEX}}})_(?P<secret>[A-Za-z0-9_-]{{20,128}})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def role_allows(role: str, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may (unknown roles may do nothing)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)  # type: ignore[arg-type]


def hash_secret(secret: str) -> str:
    """The stored form of a token secret: ``sha256:<hex>``.

    A plain SHA-256 is the right tool here, unlike for passwords: the secret is 256 bits from a CSPRNG, so
    there is nothing to guess and no dictionary to precompute; a slow hash (bcrypt, scrypt) would only make
    every API request slower without adding protection.
    """
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with its stored hash."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed ``lep_<id>_<secret>`` token, else None."""
    match = _TOKEN_RE.match(token)
    return (match["id"], match["secret"]) if match else None


def looks_like_token(text: str) -> bool:
    """Whether ``text`` (a URL query string, say) carries something shaped like an API token."""
    return TOKEN_PREFIX in text and re.search(rf"{TOKEN_PREFIX}[0-9a-f]{{{TOKEN_ID_HEX}}}_", text) is not None


@dataclass(frozen=True)
class ApiToken:
    """A stored API token: never the secret, only its hash."""

    token_id: str
    name: str
    role: Role
    secret_hash: str
    created_at: float
    created_by: str
    revoked_at: float | None = None

    @property
    def actor(self) -> str:
        """How the token's requests read in the audit log."""
        return f"token:{self.token_id}:{self.name}"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log: who did what to which target, when, from where, and how it ended."""

    id: int
    ts: float
    actor: str
    role: str | None
    action: str
    target: str | None
    status: int
    remote: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """The caller of a request, once authenticated."""

    actor: str
    role: Role
    token_id: str | None = None


class AuthRefused(Exception):
    """A request refused: ``status`` (401, 403 or 429), the ``reason`` for the caller and the audit log."""

    def __init__(
        self, status: int, reason: str, *, retry_after_s: float | None = None, principal: Principal | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.principal = principal


# ------------------------------------------------------------------------------------------ rate limits


class TokenBucket:
    """``burst`` requests at once, refilled at ``rate_per_s``; :meth:`take` says how long to wait."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Spend one request: 0.0 if allowed, else the seconds until one is allowed again."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """One :class:`TokenBucket` per key (a token id, or a remote address), at most ``max_keys`` kept
    (the least recently used is forgotten, so keys chosen by an attacker cannot grow memory)."""

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one request of ``key``: 0.0 if allowed, else the seconds to wait (for ``Retry-After``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now)


# --------------------------------------------------------------------------------------------- tokens


class TokenManager:
    """Creates, lists and revokes the API tokens of a store, auditing each change as ``actor`` (the CLI's
    ``cli:<user>``; the API passes ``audited=False``, its audit middleware records the request)."""

    def __init__(self, store: Store, actor: str, *, audited: bool = True) -> None:
        self.store = store
        self.actor = actor
        self.audited = audited

    def create(self, name: str, role: str, *, now: float | None = None) -> tuple[ApiToken, str]:
        """A new token and its full text ``lep_<id>_<secret>`` (shown once: only its hash is stored)."""
        if not _NAME_RE.match(name):
            raise ValueError(
                f"token name {name!r}: use 1-64 characters from A-Z, a-z, 0-9, '_', '.', '@', '-' (e.g. 'ci-deploy')"
            )
        if role not in ROLES:
            raise ValueError(f"token role {role!r}: must be one of {', '.join(ROLES)}")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        token = ApiToken(
            token_id=secrets.token_hex(TOKEN_ID_HEX // 2),
            name=name,
            role=role,  # type: ignore[arg-type]
            secret_hash=hash_secret(secret),
            created_at=time.time() if now is None else now,
            created_by=self.actor,
        )
        self.store.add_api_token(token)
        self._audit("token.create", token.token_id, 201, {"name": name, "role": role})
        return token, f"{TOKEN_PREFIX}{token.token_id}_{secret}"

    def revoke(self, token_id: str) -> bool:
        """Revoke a token at once; False if there is no such (unrevoked) token."""
        revoked = self.store.revoke_api_token(token_id, time.time())
        self._audit("token.revoke", token_id, 200 if revoked else 404, {})
        return revoked

    def list(self) -> list[ApiToken]:
        return self.store.list_api_tokens()

    def _audit(self, action: str, target: str, status: int, detail: dict[str, Any]) -> None:
        if not self.audited:
            return
        self.store.add_audit(
            actor=self.actor, role=None, action=action, target=target, status=status, remote=None, detail=detail
        )


# --------------------------------------------------------------------------------------- authentication


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or raises :class:`AuthRefused`.

    With ``insecure_local`` every request is the ``insecure-local`` admin (still rate limited and audited).
    """

    def __init__(self, store: Store, limiter: RateLimiter, *, insecure_local: bool = False) -> None:
        self.store = store
        self.limiter = limiter
        self.failures = RateLimiter(*FAILED_ATTEMPTS)
        self.insecure_local = insecure_local

    def authenticate(self, authorization: str | None, query: str, remote: str | None) -> Principal:
        if looks_like_token(query):
            self._throttle(f"addr:{remote}", self.failures)
            raise AuthRefused(
                401,
                "API tokens in the URL are refused (URLs end up in logs and browser history); "
                "send 'Authorization: Bearer <token>' instead",
            )
        principal = Principal(INSECURE_LOCAL, "admin") if self.insecure_local else self._check(authorization, remote)
        try:
            self._throttle(principal.actor, self.limiter)
        except AuthRefused as e:
            e.principal = principal
            raise
        return principal

    def _check(self, authorization: str | None, remote: str | None) -> Principal:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        reason = None
        token = None
        if not authorization:
            reason = "no 'Authorization: Bearer <token>' header"
        elif scheme.lower() != "bearer" or not credentials.strip():
            reason = "the Authorization header is not 'Bearer <token>'"
        elif (parsed := parse_token(credentials.strip())) is None:
            reason = "malformed API token (expected lep_<id>_<secret>)"
        else:
            token_id, secret = parsed
            token = self.store.get_api_token(token_id)
            if token is None or not secret_matches(secret, token.secret_hash):
                reason, token = "unknown API token or wrong secret", None
            elif token.revoked_at is not None:
                reason = f"API token {token_id} was revoked"
        if reason is not None or token is None:
            self._throttle(f"addr:{remote}", self.failures)
            raise AuthRefused(401, reason or "unknown API token")
        return Principal(token.actor, token.role, token.token_id)

    @staticmethod
    def _throttle(key: str, limiter: RateLimiter) -> None:
        wait = limiter.take(key)
        if wait > 0:
            if key.startswith("addr:"):
                what, setting = "refused attempts/s from this address", ""
            else:
                what, setting = "requests/s", " (api.rate_limit_per_s, api.rate_limit_burst)"
            raise AuthRefused(
                429,
                f"rate limit of {limiter.rate_per_s:g} {what} (burst {limiter.burst}) exceeded; "
                f"retry in {wait:.2f} s{setting}",
                retry_after_s=wait,
            )

    @staticmethod
    def authorize(principal: Principal, needed: Role) -> None:
        if not role_allows(principal.role, needed):
            raise AuthRefused(
                403, f"role {principal.role!r} may not do this; it needs {needed!r} or above", principal=principal
            )
