"""Release signing of model artifacts with ed25519, TUF-style (used by the ``keygen`` and ``sign`` commands).

What is signed is metadata, never the bytes: the canonical JSON document of :func:`metadata_document` (the
artifact's ``version`` and ``target``, the URL **path**, its ``length`` and ``sha256``, and ``expires``),
prefixed by :data:`SIGNATURE_CONTEXT` (domain separation: a release key's signatures are valid for nothing
else). The reference names the signing key by :func:`key_id`, so a device can trust several keys at once
(key rotation, docs/updates.md). A device checks the signature before it downloads anything, then checks the
bytes against the signed length and sha256.

Only the URL's path is signed, not its host or query: the same release can be served by mirrors, and
presigned query strings change per download. Hosts are bounded instead by the device's remote policy
(``agent.remote_policy.artifact_hosts``), checked before anything is fetched, so a reference replayed with
another path fails its signature and one replayed with another host reaches only allow-listed hosts.

Keys are PEM files: the private key is PKCS#8 (unencrypted, mode 0600: keep it off the devices), the public
key is SubjectPublicKeyInfo, a file that ``agent.artifact_public_keys`` lists on each device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.core.fileio import file_digest
from lepton_edge.device.artifact_common import ArtifactRefused, shown_url

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_CONTEXT = b"lepton-edge artifact metadata v2\x00"
"""Bytes signed before the metadata document (domain separation)."""
DEFAULT_EXPIRES_S = 365 * 24 * 3600
"""How long a signed reference stays valid unless ``lepton-edge sign --expires-in`` says otherwise."""
RESIGN_HINT = (
    "re-sign it with `lepton-edge sign FILE --key RELEASE.key --url URL --version N --target TARGET` "
    "and put the printed reference in model.artifact"
)
SIGNED_FIELDS = ("version", "target", "expires", "key_id", "signature")
"""The reference fields a signed reference must carry besides url, size and sha256."""


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and sha256 (hex) of the file ``path``; UpdateError when it cannot be read."""
    try:
        return file_digest(path)
    except FileNotFoundError:
        raise UpdateError(f"{path}: file not found") from None
    except OSError as e:
        raise UpdateError(f"{path}: cannot read: {e}") from None


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UpdateError("artifact signatures need the `cryptography` package: pip install cryptography") from None
    return ed25519


def signed_path(url: str) -> str:
    """The part of ``url`` a signature covers: its path (``/`` when empty), without host and query."""
    return urlsplit(url).path or "/"


def metadata_document(ref: ArtifactRef) -> bytes:
    """The canonical metadata a signature covers: sorted-key compact JSON, ASCII only."""
    missing = [name for name in ("version", "target", "expires") if getattr(ref, name) is None]
    if missing:
        raise UpdateError(f"artifact {shown_url(ref.url)}: the reference has no {', '.join(missing)} to sign")
    document = {
        "expires": ref.expires,
        "length": ref.size,
        "path": signed_path(ref.url),
        "sha256": ref.sha256.lower(),
        "target": ref.target,
        "version": ref.version,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signed_message(ref: ArtifactRef) -> bytes:
    """The bytes an artifact signature covers: the context prefix and the metadata document."""
    return SIGNATURE_CONTEXT + metadata_document(ref)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id a reference names its key by: the first 16 hex digits of the raw public key's sha256."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new ed25519 key pair as PEM files; the private key is created with mode 0600.

    Existing files are never overwritten (a lost release key cannot be recovered).
    """
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise UpdateError(f"{path}: already exists; remove it or choose another --out (keys are never overwritten)")
    key = _crypto().Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)  # O_CREAT's mode is filtered by the umask; this one is not
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(public_pem)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UpdateError(f"{path}: {what} not found (create a key pair with `lepton-edge keygen`)") from None
    except OSError as e:
        raise UpdateError(f"{path}: cannot read {what}: {e}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The ed25519 private key in the PEM file ``path``."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read_pem(path, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise UpdateError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, _crypto().Ed25519PrivateKey):
        raise UpdateError(f"{path}: not an ed25519 private key (got {type(key).__name__}); use `lepton-edge keygen`")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The ed25519 public key in the PEM file ``path``."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        key = serialization.load_pem_public_key(_read_pem(path, "public key"))
    except (ValueError, TypeError) as e:
        raise UpdateError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, _crypto().Ed25519PublicKey):
        raise UpdateError(f"{path}: not an ed25519 public key (got {type(key).__name__}); use `lepton-edge keygen`")
    return key


def sign_reference(ref: ArtifactRef, private_key: str | Path | Ed25519PrivateKey) -> ArtifactRef:
    """``ref`` with ``key_id`` and ``signature`` set: its metadata signed with ``private_key``."""
    key = private_key if isinstance(private_key, _crypto().Ed25519PrivateKey) else load_private_key(private_key)
    signature = base64.b64encode(key.sign(signed_message(ref))).decode("ascii")
    return ref.model_copy(update={"key_id": key_id(key.public_key()), "signature": signature})


def sign_file(
    path: str | Path,
    private_key: str | Path | Ed25519PrivateKey,
    *,
    url: str,
    version: int,
    target: str,
    expires: int,
) -> ArtifactRef:
    """The signed reference of the file ``path``, to be published at ``url``."""
    path = Path(path)
    if path.is_dir():
        raise UpdateError(
            f"{path}: is a directory; pack an artifact directory first: "
            f"tar -cf {path.name}.tar -C {path.parent} "
            f"{path.name}"
        )
    size, sha256 = file_sha256(path)
    if size == 0:
        raise UpdateError(f"{path}: the file is empty")
    try:
        ref = ArtifactRef(url=url, size=size, sha256=sha256, version=version, target=target, expires=expires)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UpdateError(f"{path}: cannot sign this reference: {problems}") from None
    return sign_reference(ref, private_key)


class TrustedKeys:
    """The release public keys a device trusts, by key id; verifies signed references.

    A key file that cannot be loaded is logged and named in every refusal, never fatal: the device keeps
    running, and only updates are refused until the file is fixed.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.problems: list[str] = []
        for path in self.paths:
            try:
                key = load_public_key(path)
            except UpdateError as e:
                log.error("artifact public key not loaded: %s", e)
                self.problems.append(str(e))
                continue
            self.keys[key_id(key)] = key

    def __bool__(self) -> bool:
        return bool(self.paths)

    def verify(self, ref: ArtifactRef) -> None:
        """Raise ArtifactRefused unless ``ref`` carries signed metadata from a trusted key."""
        from cryptography.exceptions import InvalidSignature

        url = shown_url(ref.url)
        missing = [name for name in SIGNED_FIELDS if getattr(ref, name) is None]
        if ref.signature and missing:
            raise ArtifactRefused(
                "metadata format",
                f"artifact {url}: the signature covers the sha256 only (an old format without "
                f"{', '.join(missing)}), which anyone can replay with another URL or an older version; "
                f"{RESIGN_HINT}",
            )
        if missing:
            raise ArtifactRefused("unsigned", f"artifact {url}: not signed (no {', '.join(missing)}); {RESIGN_HINT}")
        key = self.keys.get(str(ref.key_id))
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none"
            unusable = f"; keys that could not be loaded: {'; '.join(self.problems)}" if self.problems else ""
            raise ArtifactRefused(
                "unknown key",
                f"artifact {url}: signed by key {ref.key_id}, which this device does not trust (trusted: "
                f"{known}{unusable}); add its public key to agent.artifact_public_keys or re-sign with a "
                "trusted key",
            )
        try:
            raw = base64.b64decode(str(ref.signature), validate=True)
            key.verify(raw, signed_message(ref))
        except (binascii.Error, ValueError, InvalidSignature):
            raise ArtifactRefused(
                "signature",
                f"artifact {url}: the signature does not match the metadata (version {ref.version}, target "
                f"{ref.target}, path {signed_path(ref.url)}, {ref.size} bytes, sha256 {ref.sha256}, expires "
                f"{ref.expires}) under key {ref.key_id}: the reference was altered or replayed with another "
                f"URL path; {RESIGN_HINT}",
            ) from None


def verify_file(path: str | Path, keys: TrustedKeys, ref: ArtifactRef) -> None:
    """Raise UpdateError unless ``ref`` is signed by one of ``keys`` and the file is the signed one."""
    keys.verify(ref)
    size, actual = file_sha256(Path(path))
    if (size, actual) != (ref.size, ref.sha256.lower()):
        raise UpdateError(
            f"{path}: {size} bytes with sha256 {actual}, expected {ref.size} bytes with sha256 "
            f"{ref.sha256.lower()}; the file is not the signed one"
        )
