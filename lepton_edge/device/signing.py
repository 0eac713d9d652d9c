"""Release signing of model artifacts with ed25519 (used by the ``keygen`` and ``sign`` commands).

What is signed: the file's sha256 digest (32 raw bytes) prefixed by :data:`SIGNATURE_CONTEXT`, never the
bytes themselves. A device can therefore check the signature of an artifact reference before it downloads
anything, then check the downloaded bytes against the signed digest. The prefix keeps a release key's
signatures from being valid for any other use of the same key.

Keys are PEM files: the private key is PKCS#8 (unencrypted, mode 0600: keep it off the devices), the public
key is SubjectPublicKeyInfo, the file that ``agent.artifact_public_key`` names on each device.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_edge.core.errors import UpdateError
from lepton_edge.core.fileio import file_digest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_CONTEXT = b"lepton-edge artifact sha256 v1\x00"
"""Bytes signed before the digest (domain separation)."""


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
        raise UpdateError(
            "artifact signatures need the `cryptography` package: pip install cryptography"
        ) from None
    return ed25519


def signed_message(sha256: str) -> bytes:
    """The bytes an artifact signature covers: the context prefix and the raw sha256 digest."""
    try:
        digest = bytes.fromhex(sha256)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise UpdateError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return SIGNATURE_CONTEXT + digest


def generate_keypair(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new ed25519 key pair as PEM files; the private key is created with mode 0600.

    Existing files are never overwritten (a lost release key cannot be recovered).
    """
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise UpdateError(
                f"{path}: already exists; remove it or choose another --out (keys are never overwritten)"
            )
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
        raise UpdateError(
            f"{path}: not an ed25519 private key (got {type(key).__name__}); use `lepton-edge keygen`"
        )
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
        raise UpdateError(
            f"{path}: not an ed25519 public key (got {type(key).__name__}); use `lepton-edge keygen`"
        )
    return key


def sign_digest(sha256: str, private_key: str | Path | Ed25519PrivateKey) -> str:
    """Base64 signature of the artifact whose sha256 is ``sha256``."""
    key = (
        private_key if isinstance(private_key, _crypto().Ed25519PrivateKey) else load_private_key(private_key)
    )
    return base64.b64encode(key.sign(signed_message(sha256.lower()))).decode("ascii")


def verify_signature(sha256: str, signature: str, public_key: str | Path | Ed25519PublicKey) -> None:
    """Raise UpdateError unless ``signature`` (base64) signs ``sha256`` with ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    key = public_key if isinstance(public_key, _crypto().Ed25519PublicKey) else load_public_key(public_key)
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise UpdateError("artifact signature is not valid base64; copy it from `lepton-edge sign`") from None
    try:
        key.verify(raw, signed_message(sha256.lower()))
    except InvalidSignature:
        where = f" {public_key}" if isinstance(public_key, str | Path) else ""
        raise UpdateError(
            f"artifact signature does not match sha256 {sha256.lower()} under the public key{where}: the "
            "artifact was signed by another key, or the reference was altered; re-sign it with the release "
            "key"
        ) from None


def sign_file(path: str | Path, private_key: str | Path | Ed25519PrivateKey) -> dict[str, Any]:
    """The ArtifactRef fields of the file ``path``: url (None: for the operator), size, sha256, signature."""
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
    return {"url": None, "size": size, "sha256": sha256, "signature": sign_digest(sha256, private_key)}


def verify_file(
    path: str | Path, public_key: str | Path | Ed25519PublicKey, sha256: str, signature: str
) -> None:
    """Raise UpdateError unless the file has this sha256 and ``signature`` signs it with ``public_key``."""
    verify_signature(sha256, signature, public_key)
    _, actual = file_sha256(Path(path))
    if actual != sha256.lower():
        raise UpdateError(
            f"{path}: sha256 is {actual}, expected {sha256.lower()}; the file is not the signed one"
        )
