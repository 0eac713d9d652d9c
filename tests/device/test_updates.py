"""Artifact updates against a real loopback HTTP server (with Range support) and real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.artifact_common import Cancellation
from lepton_edge.device.artifact_download import ArtifactDownloader
from lepton_edge.device.signing import generate_keypair, sign_reference
from lepton_edge.device.updates import ArtifactStore
from tests.support.http_server import LoopbackServer
from tests.support.onnx_models import mean_color_classifier

pytestmark = pytest.mark.integration

MAX_BYTES = 10 * 1024 * 1024
TARGET = "test-cameras"


class FileServer(LoopbackServer):
    """Serves the files of ``root`` over HTTP/1.1 on loopback, with misbehaviours switched on per file."""

    def __init__(self, root: Path, tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)
        self.truncate_once: dict[str, int] = {}  # name -> bytes sent before closing, on the next request only
        self.extra: dict[str, bytes] = {}  # name -> bytes appended to the file
        self.no_length: set[str] = set()  # names sent without Content-Length, ended by closing the connection
        self.redirects: dict[str, str] = {}  # name -> Location
        self.honour_ranges = True
        self._lock = threading.Lock()
        super().__init__(tls)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        name = req.path.lstrip("/").split("?")[0]
        range_header = req.headers.get("Range")
        with self._lock:
            self.requests.append((name, range_header))
            cut = self.truncate_once.pop(name, None)
        if name in self.redirects:
            req.send_response(302)
            req.send_header("Location", self.redirects[name])
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        path = self.root / name
        if not path.is_file():
            req.send_error(404)
            return
        data = path.read_bytes() + self.extra.get(name, b"")
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.honour_ranges:
            start = int(match.group(1))
            if start >= len(data):
                req.send_error(416)
                return
            req.send_response(206)
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            req.send_response(200)
        body = data[start:]
        if name in self.no_length:
            req.send_header("Connection", "close")
            req.close_connection = True
        else:
            req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if cut is not None:
            req.wfile.write(body[:cut])
            req.wfile.flush()
            req.close_connection = True
            return
        try:
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            req.close_connection = True  # the client stopped reading (a refused, oversized download)

    def names_requested(self) -> list[str]:
        return [name for name, _ in self.requests]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    srv = FileServer(root)
    yield srv
    srv.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    generate_keypair(private, public)
    return private, public


def make_ref(path: Path, url: str, private_key: Path | None, **overrides: object) -> ArtifactRef:
    """The reference of ``path`` at ``url`` (version 1 of TARGET, valid for an hour), with ``overrides``
    applied before signing with ``private_key`` (None: unsigned)."""
    data = path.read_bytes()
    fields: dict[str, object] = {"url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if private_key is not None:
        fields.update(version=1, target=TARGET, expires=int(time.time()) + 3600)
    fields.update(overrides)
    ref = ArtifactRef(**fields)
    return sign_reference(ref, private_key) if private_key is not None else ref


def publish_model(server: FileServer, name: str, size: int = 32) -> Path:
    """A real ONNX classifier in the server folder; ``size`` changes its bytes (the input shape)."""
    return mean_color_classifier(server.root / name, size=size)


def store_for(tmp_path: Path, public_key: Path | None, **kwargs: object) -> ArtifactStore:
    kwargs.setdefault("retry_delay_s", 0.0)
    kwargs.setdefault("targets", [TARGET])
    return ArtifactStore(tmp_path / "state", public_key, MAX_BYTES, **kwargs)  # type: ignore[arg-type]


def assert_current_link_complete(store: ArtifactStore) -> None:
    link = store.root / "current"
    if not os.path.lexists(link):
        return
    target = Path(os.path.realpath(link))
    assert target.is_dir(), f"current -> {os.readlink(link)} is dangling"
    assert (target / "slot.json").is_file()
    assert store.current() is not None and store.current().exists()


def run_classifier(model: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    image = np.zeros((1, 3, 32, 32), np.float32)
    image[:, 1] = 0.5
    return session.run(None, {"images": image})[0]


# ------------------------------------------------------------------------------------------- good paths


def test_good_update_is_staged_verified_and_activated(tmp_path, server, keys):
    model = publish_model(server, "det.onnx")
    ref = make_ref(model, server.url("det.onnx"), keys[0])
    store = store_for(tmp_path, keys[1])
    seen: list[tuple[int, int]] = []

    staged = store.stage(ref, progress=lambda done, total: seen.append((done, total)))
    assert staged.read_bytes() == model.read_bytes()
    assert store.current() is None  # staging changes nothing active
    assert seen[-1] == (ref.size, ref.size)

    active = store.activate(staged)
    assert active == store.current() == tmp_path / "state" / "slots" / "a" / "content" / "det.onnx"
    assert os.readlink(tmp_path / "state" / "current") == "slots/a"
    assert store.previous() is None
    assert store.current_sha256() == ref.sha256
    np.testing.assert_allclose(run_classifier(active), [[0.0, 0.5, 0.0]], atol=1e-6)
    assert not list((tmp_path / "state" / "staging").iterdir())  # no download or staged slot left behind
    assert_current_link_complete(store)


def test_tar_of_an_artifact_directory_is_unpacked_and_opens(tmp_path, server, keys):
    from lepton_edge.engines.artifacts import open_artifact
    from lepton_edge.engines.builder import build_artifact

    source = mean_color_classifier(tmp_path / "src" / "m.onnx")
    build_artifact(source, tmp_path / "built" / "colors-fp32", progress=False)
    tar_path = server.root / "colors-fp32.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "built" / "colors-fp32", arcname="colors-fp32")
    store = store_for(tmp_path, keys[1])

    active = store.activate(store.stage(make_ref(tar_path, server.url("colors-fp32.tar"), keys[0])))
    assert active == tmp_path / "state" / "slots" / "a" / "content" / "colors-fp32"
    assert (active / "manifest.json").is_file()
    backend = open_artifact(active, in_pipeline=False)
    try:
        out = backend.infer({"images": np.full((1, 3, 32, 32), 0.25, np.float32)})
    finally:
        backend.close()
    np.testing.assert_allclose(out[0], [[0.25, 0.25, 0.25]], atol=1e-6)


def test_file_url_is_copied_and_a_wrong_size_refused(tmp_path, keys):
    model = mean_color_classifier(tmp_path / "local" / "m.onnx")
    store = store_for(tmp_path, keys[1])
    ref = make_ref(model, model.as_uri(), keys[0])
    assert store.activate(store.stage(ref)).read_bytes() == model.read_bytes()

    other = mean_color_classifier(tmp_path / "local" / "other.onnx", size=16)
    wrong = make_ref(other, other.as_uri(), keys[0], size=other.stat().st_size + 7)
    with pytest.raises(UpdateError, match=r"the file has \d+ bytes, the reference says"):
        store.stage(wrong)


def test_an_artifact_already_in_a_slot_is_not_downloaded_again(tmp_path, server, keys):
    one = make_ref(publish_model(server, "one.onnx"), server.url("one.onnx"), keys[0])
    two = make_ref(publish_model(server, "two.onnx", size=16), server.url("two.onnx"), keys[0])
    store = store_for(tmp_path, keys[1])
    first = store.activate(store.stage(one))
    store.activate(store.stage(two))
    server.requests.clear()

    again = store.stage(two)  # the current one: returned in place, activate is a no-op
    assert store.activate(again) == store.current()
    back = store.stage(one)  # the previous one: switched back to without a download
    assert back == first and store.activate(back) == first == store.current()
    assert server.requests == []
    assert store.previous() is not None and store.previous().name == "two.onnx"
    with pytest.raises(UpdateError, match="not signed"):  # being on disk does not waive the signature
        store.stage(one.model_copy(update={"signature": None}))


# ------------------------------------------------------------------------------------------- refusals


def test_wrong_hash_is_refused_and_the_download_discarded(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    wrong_sha = hashlib.sha256(b"something else").hexdigest()
    ref = make_ref(model, server.url("m.onnx"), keys[0], sha256=wrong_sha)
    store = store_for(tmp_path, keys[1])
    with pytest.raises(UpdateError, match=r"expected \d+ bytes with sha256 " + wrong_sha):
        store.stage(ref)
    assert not list((tmp_path / "state" / "staging").iterdir())
    assert store.current() is None


def test_wrong_signature_is_refused_before_downloading(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    signature_of_other = make_ref(model, server.url("m.onnx"), keys[0], version=2).signature
    ref = make_ref(model, server.url("m.onnx"), keys[0]).model_copy(update={"signature": signature_of_other})
    with pytest.raises(UpdateError, match="signature does not match"):
        store_for(tmp_path, keys[1]).stage(ref)
    assert server.requests == []


def test_missing_signature_is_refused(tmp_path, server, keys):
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), None)
    with pytest.raises(UpdateError, match=r"not signed \(no version, .*re-sign it with `lepton-edge sign"):
        store_for(tmp_path, keys[1]).stage(ref)
    assert server.requests == []


def test_signature_by_another_key_is_refused(tmp_path, server, keys):
    other_private, _ = tmp_path / "other.key", tmp_path / "other.pub"
    generate_keypair(other_private, tmp_path / "other.pub")
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), other_private)
    with pytest.raises(UpdateError, match=r"which this device does not trust .*\[refused: unknown key\]"):
        store_for(tmp_path, keys[1]).stage(ref)
    assert server.requests == []


def test_without_a_public_key_updates_are_refused_unless_unsigned_is_allowed(tmp_path, server):
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), None)
    with pytest.raises(UpdateError, match=r"no public key to verify it; list the release public keys"):
        store_for(tmp_path, None).stage(ref)
    assert server.requests == []
    store = store_for(tmp_path, None, allow_unsigned=True)
    assert store.activate(store.stage(ref)) == store.current()


def test_size_above_max_bytes_is_refused_before_downloading(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    store = ArtifactStore(tmp_path / "state", keys[1], ref.size - 1)
    with pytest.raises(UpdateError, match=rf"is {ref.size} bytes, above the limit of {ref.size - 1}"):
        store.stage(ref)
    assert server.requests == []


def test_a_server_announcing_more_than_the_size_is_refused(tmp_path, server, keys):
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), keys[0])
    server.extra["m.onnx"] = b"\0" * 4096
    with pytest.raises(UpdateError, match=rf"announces {ref.size + 4096} bytes, more than the {ref.size}"):
        store_for(tmp_path, keys[1]).stage(ref)
    assert not list((tmp_path / "state" / "staging").iterdir())


def test_a_server_sending_more_without_announcing_it_is_cut_off(tmp_path, server, keys):
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), keys[0])
    server.extra["m.onnx"] = b"\0" * 10_000_000
    server.no_length.add("m.onnx")
    store = store_for(tmp_path, keys[1])
    with pytest.raises(UpdateError, match=r"sent more than the \d+ bytes of the reference"):
        store.stage(ref)
    assert not list((tmp_path / "state" / "staging").iterdir())
    assert store.current() is None


def test_http_error_is_reported_without_retrying(tmp_path, server, keys):
    model = mean_color_classifier(tmp_path / "unpublished.onnx")
    ref = make_ref(model, server.url("unpublished.onnx"), keys[0])
    with pytest.raises(UpdateError, match=r"HTTP 404 .*check the URL"):
        store_for(tmp_path, keys[1]).stage(ref)
    assert server.names_requested() == ["unpublished.onnx"]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), signed by itself."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lepton-edge test updates")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_certificates_are_verified(tmp_path, keys):
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    (tmp_path / "tls").mkdir()
    server = FileServer(tmp_path / "tls", tls=context)
    try:
        model = mean_color_classifier(server.root / "m.onnx")
        ref = make_ref(model, server.url("m.onnx"), keys[0])
        assert ref.url.startswith("https://127.0.0.1:")
        with pytest.raises(UpdateError, match=r"TLS certificate verification failed .*self.signed"):
            store_for(tmp_path, keys[1]).stage(ref)
        assert server.requests == []
        trusting = store_for(tmp_path, keys[1], ca_file=cert)
        assert trusting.stage(ref).read_bytes() == model.read_bytes()
        assert server.names_requested() == ["m.onnx"]
    finally:
        server.close()


def test_redirects_are_followed_within_the_scheme_only(tmp_path, server, keys):
    model = publish_model(server, "real.onnx")
    server.redirects["moved.onnx"] = server.url("real.onnx")
    store = store_for(tmp_path, keys[1])
    assert store.stage(make_ref(model, server.url("moved.onnx"), keys[0])).read_bytes() == model.read_bytes()
    assert server.names_requested() == ["moved.onnx", "real.onnx"]

    other = publish_model(server, "other.onnx", size=16)
    server.redirects["downgrade.onnx"] = f"https://127.0.0.1:{server.httpd.server_port}/other.onnx"
    with pytest.raises(UpdateError, match=r"redirected to https://.*another scheme are refused"):
        store.stage(make_ref(other, server.url("downgrade.onnx"), keys[0]))


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("artifact/manifest.json")
        manifest = b"{}"
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil.onnx"), "climbs out of the archive"),
        (tarfile.TarInfo("artifact/../../evil.onnx"), "climbs out of the archive"),
        (tarfile.TarInfo("/tmp/evil.onnx"), "absolute path"),
    ],
)
def test_tar_with_path_traversal_is_refused(tmp_path, server, keys, member, message):
    tar_path = server.root / "bad.tar"
    _tar_with(tar_path, member, b"payload")
    store = store_for(tmp_path, keys[1])
    with pytest.raises(UpdateError, match=message):
        store.stage(make_ref(tar_path, server.url("bad.tar"), keys[0]))
    assert not list(tmp_path.rglob("evil.onnx"))
    assert store.current() is None
    assert not [p for p in (tmp_path / "state" / "staging").iterdir() if p.suffix != ".part"]


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        (tarfile.SYMTYPE, "../../../outside"),
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "../outside"),
    ],
)
def test_tar_with_links_outside_is_refused(tmp_path, server, keys, kind, target):
    member = tarfile.TarInfo("artifact/model.onnx")
    member.type, member.linkname = kind, target
    tar_path = server.root / "links.tar"
    _tar_with(tar_path, member)
    with pytest.raises(UpdateError, match=r"outside the archive"):
        store_for(tmp_path, keys[1]).stage(make_ref(tar_path, server.url("links.tar"), keys[0]))


def test_tar_without_a_model_is_refused_with_what_it_holds(tmp_path, server, keys):
    tar_path = server.root / "notes.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(UpdateError, match=r"neither an artifact directory .* found \['README.txt'\]"):
        store_for(tmp_path, keys[1]).stage(make_ref(tar_path, server.url("notes.tar"), keys[0]))


def test_artifact_ref_validates_its_fields():
    good = {"url": "https://updates.example.com/m.onnx", "size": 10, "sha256": "AB" * 32}
    assert ArtifactRef(**good).sha256 == "ab" * 32
    for field, value, message in [
        ("url", "ftp://host/m.onnx", "must start with https://, http:// or file://"),
        ("url", "file://relative/m.onnx", "file URLs need an absolute path"),
        ("size", 0, "greater than 0"),
        ("sha256", "12" * 31, "should match pattern"),
        ("signature", "not base64!", "not valid base64"),
        ("signature", "c2hvcnQ=", "must decode to 64 bytes"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ArtifactRef(**{**good, field: value})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ArtifactRef(**good, name="x")


# ------------------------------------------------------------------------------------------- interruptions


def test_truncated_download_is_deleted_and_the_next_attempt_starts_over(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    cut = ref.size // 2
    server.truncate_once["m.onnx"] = cut
    store = store_for(tmp_path, keys[1], attempts=1)
    with pytest.raises(UpdateError, match=rf"at {cut} of {ref.size} bytes .*partial file is deleted"):
        store.stage(ref)
    part = tmp_path / "state" / "staging" / f"{ref.sha256}.part"
    assert not part.exists()  # a server that closes early cannot fill the disk with partial files
    assert store.current() is None

    staged = store.stage(ref)
    assert staged.read_bytes() == model.read_bytes()
    assert server.requests == [("m.onnx", None), ("m.onnx", None)]


def test_a_dropped_connection_is_resumed_within_one_stage(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    server.truncate_once["m.onnx"] = 100
    staged = store_for(tmp_path, keys[1], attempts=2).stage(ref)
    assert staged.read_bytes() == model.read_bytes()
    assert server.requests == [("m.onnx", None), ("m.onnx", "bytes=100-")]


def test_crash_mid_download_resumes_from_the_partial_file(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    (staging / f"{ref.sha256}.part").write_bytes(model.read_bytes()[:123])  # what a killed process leaves
    (staging / f"{ref.sha256}.slot.tmp").mkdir()  # and a half-unpacked slot

    store = store_for(tmp_path, keys[1])  # a fresh process
    assert not (staging / f"{ref.sha256}.slot.tmp").exists()
    assert store.activate(store.stage(ref)).read_bytes() == model.read_bytes()
    assert server.requests == [("m.onnx", "bytes=123-")]


def test_a_server_ignoring_ranges_restarts_the_download(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    (staging / f"{ref.sha256}.part").write_bytes(b"\xff" * 50)  # must be overwritten, not appended to
    server.honour_ranges = False
    assert store_for(tmp_path, keys[1]).stage(ref).read_bytes() == model.read_bytes()
    assert server.requests == [("m.onnx", "bytes=50-")]


# ------------------------------------------------------------------------------------------- slots


def test_rollback_restores_the_previous_slot(tmp_path, server, keys):
    refs = [
        make_ref(publish_model(server, f"v{i}.onnx", size=8 * (i + 1)), server.url(f"v{i}.onnx"), keys[0])
        for i in range(3)
    ]
    store = store_for(tmp_path, keys[1])
    assert store.rollback() is None  # nothing to roll back to

    v0 = store.activate(store.stage(refs[0]))
    assert_current_link_complete(store)
    assert store.rollback() is None and store.current() == v0
    v1 = store.activate(store.stage(refs[1]))
    assert_current_link_complete(store)
    assert (store.current(), store.previous()) == (v1, v0)
    assert v0.parent.parent.name == "a" and v1.parent.parent.name == "b"

    assert store.rollback() == v0 == store.current()
    assert_current_link_complete(store)
    assert store.previous() is None and store.rollback() is None

    # A fresh store (after a restart) sees the same state.
    store = store_for(tmp_path, keys[1])
    assert store.current() == v0 and store.current_sha256() == refs[0].sha256

    v2 = store.activate(store.stage(refs[2]))  # into slot b, replacing the rolled-back v1
    assert_current_link_complete(store)
    assert v2.parent.parent.name == "b" and v2.name == "v2.onnx"
    assert (store.current(), store.previous()) == (v2, v0)
    assert not list((tmp_path / "state" / "slots" / "b" / "content").glob("v1.onnx"))


def test_current_link_survives_a_crash_during_activation(tmp_path, server, keys):
    refs = [
        make_ref(publish_model(server, f"v{i}.onnx", size=8 * (i + 1)), server.url(f"v{i}.onnx"), keys[0])
        for i in range(2)
    ]
    store = store_for(tmp_path, keys[1])
    v0 = store.activate(store.stage(refs[0]))
    store.stage(refs[1])
    state = tmp_path / "state"
    # What a crash between the steps of activate() can leave: a half-made link, the old slot moved away.
    os.symlink("slots/b", state / ".current.tmp")
    (state / "staging" / "discarded-b.tmp").mkdir()

    store = store_for(tmp_path, keys[1])
    assert not os.path.lexists(state / ".current.tmp")
    assert not (state / "staging" / "discarded-b.tmp").exists()
    assert store.current() == v0
    assert_current_link_complete(store)
    v1 = store.activate(store.stage(refs[1]))  # the staged slot survived the restart
    assert store.current() == v1 and store.previous() == v0
    assert_current_link_complete(store)


def test_activate_refuses_paths_that_were_not_staged(tmp_path, keys):
    stray = mean_color_classifier(tmp_path / "stray.onnx")
    with pytest.raises(UpdateError, match=r"not a staged artifact .* stage it first"):
        store_for(tmp_path, keys[1]).activate(stray)


def test_deactivate_forgets_a_failed_first_artifact(tmp_path, server, keys):
    ref = make_ref(publish_model(server, "first.onnx", size=16), server.url("first.onnx"), keys[0])
    store = store_for(tmp_path, keys[1])
    first = store.activate(store.stage(ref))
    store.deactivate()
    assert store.current() is None and store.previous() is None and store.rollback() is None
    assert store_for(tmp_path, keys[1]).current() is None  # also after a restart
    assert store.activate(store.stage(ref)) == first  # the slot is reused, not downloaded again


def test_the_downloader_returns_the_destination_holding_exactly_the_referenced_bytes(tmp_path, server):
    model = publish_model(server, "seam.onnx")
    ref = make_ref(model, server.url("seam.onnx"), None)
    dest = tmp_path / "dl" / "seam.part"
    dest.parent.mkdir()
    seen: list[tuple[int, int]] = []
    assert ArtifactDownloader().fetch(ref, dest, lambda have, total: seen.append((have, total))) == dest
    assert dest.read_bytes() == model.read_bytes()
    assert seen[-1] == (ref.size, ref.size)


def test_the_downloader_discards_bytes_that_are_not_the_referenced_ones(tmp_path):
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x" * 64)
    ref = make_ref(source, source.as_uri(), None, sha256="ab" * 32)
    dest = tmp_path / "m.part"
    with pytest.raises(UpdateError, match="not the one in the reference"):
        ArtifactDownloader().fetch(ref, dest)
    assert not dest.exists()


def test_the_downloader_refuses_when_the_reserved_room_is_not_free(tmp_path):
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x" * 64)
    ref = make_ref(source, source.as_uri(), None)
    dest = tmp_path / "m.part"
    with pytest.raises(UpdateError, match="free some space"):
        ArtifactDownloader().fetch(ref, dest, reserve_bytes=1 << 62)
    assert not dest.exists()


# ------------------------------------------------------------------------------------------- trust rules


def test_anti_rollback_survives_a_restart_and_the_running_artifact_stays_usable(tmp_path, server, keys):
    one = make_ref(publish_model(server, "one.onnx"), server.url("one.onnx"), keys[0], version=5)
    two = make_ref(publish_model(server, "two.onnx", size=16), server.url("two.onnx"), keys[0], version=6)
    store = store_for(tmp_path, keys[1])
    store.activate(store.stage(one))
    store.activate(store.stage(two))

    reopened = store_for(tmp_path, keys[1])  # a restarted device: the record is on disk
    with pytest.raises(UpdateError, match=r"version 5 of target test-cameras is below version 6.*anti-rollback"):
        reopened.stage(one)
    assert reopened.refusals == {"anti-rollback": 1}
    assert reopened.rollback() is not None and reopened.current_sha256() == one.sha256  # a local rollback
    assert reopened.stage(one) == reopened.current()  # re-reading the running one changes nothing
    assert json.loads((tmp_path / "state" / "versions.json").read_text()) == {TARGET: 6}


def test_the_operator_override_allows_exactly_one_lower_version_with_an_audit_line(tmp_path, server, keys, caplog):
    refs = {
        v: make_ref(publish_model(server, f"v{v}.onnx", size=8 + v), server.url(f"v{v}.onnx"), keys[0], version=v)
        for v in (1, 2, 3)
    }
    store_for(tmp_path, keys[1]).activate(store_for(tmp_path, keys[1]).stage(refs[3]))
    store = store_for(tmp_path, keys[1], allow_rollback={TARGET: 1})
    with caplog.at_level("WARNING", logger="lepton_edge.audit"):
        store.activate(store.stage(refs[1]))
    assert store.current_sha256() == refs[1].sha256
    assert any(
        "AUDIT artifact rollback override used: target test-cameras version 1" in r.message for r in caplog.records
    )
    with pytest.raises(UpdateError, match="anti-rollback"):
        store.stage(refs[2])


def test_expired_metadata_and_another_target_are_refused_before_downloading(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    store = store_for(tmp_path, keys[1])
    with pytest.raises(UpdateError, match=r"the signed reference expired at \d+ .*\[refused: expired\]"):
        store.stage(make_ref(model, server.url("m.onnx"), keys[0], expires=int(time.time()) - 1))
    with pytest.raises(UpdateError, match=r"signed for target 'doors', which is not this device's .*test-cameras"):
        store.stage(make_ref(model, server.url("m.onnx"), keys[0], target="doors"))
    assert server.requests == [] and store.refusals == {"expired": 1, "target": 1}


def test_several_keys_are_trusted_during_a_rotation(tmp_path, server, keys):
    new_private, new_public = tmp_path / "keys" / "new.key", tmp_path / "keys" / "new.pub"
    generate_keypair(new_private, new_public)
    model = publish_model(server, "m.onnx")
    store = store_for(tmp_path, [keys[1], new_public])
    store.stage(make_ref(model, server.url("m.onnx"), keys[0]))
    store.stage(make_ref(model, server.url("m.onnx"), new_private, version=2))
    retired = store_for(tmp_path, [new_public])  # step 3: the old key removed from the device
    with pytest.raises(UpdateError, match="unknown key"):
        retired.stage(make_ref(model, server.url("m.onnx"), keys[0], version=3))


def test_a_superseded_download_is_cancelled_and_its_part_deleted(tmp_path, server, keys):
    model = publish_model(server, "m.onnx")
    ref = make_ref(model, server.url("m.onnx"), keys[0])
    cancel = Cancellation()
    cancel.set()
    with pytest.raises(UpdateError, match=r"download cancelled after \d+ of \d+ bytes"):
        store_for(tmp_path, keys[1]).stage(ref, cancel=cancel)
    assert not list((tmp_path / "state" / "staging").iterdir())


def test_the_agent_store_trusts_the_single_key_and_the_list_and_targets_the_device_id(tmp_path, server, keys):
    from lepton_edge.config.device import AgentConfig

    new_private, new_public = tmp_path / "keys" / "new.key", tmp_path / "keys" / "new.pub"
    generate_keypair(new_private, new_public)
    agent = AgentConfig.model_validate(
        {
            "mqtt": {"host": "127.0.0.1", "client_id": "cam-7"},
            "state_dir": str(tmp_path / "agent"),
            "artifact_public_key": str(keys[1]),
            "artifact_public_keys": [str(new_public)],
        }
    )
    store = ArtifactStore.for_agent(agent, "cam-7")
    model = publish_model(server, "m.onnx")
    store.stage(make_ref(model, server.url("m.onnx"), keys[0], target="cam-7"))
    store.stage(make_ref(model, server.url("m.onnx"), new_private, target="cam-7", version=2))
    with pytest.raises(UpdateError, match=r"not this device's \(its targets: cam-7;"):
        store.stage(make_ref(model, server.url("m.onnx"), keys[0], version=3))


def test_a_key_file_that_cannot_be_loaded_refuses_updates_but_not_the_store(tmp_path, server, keys):
    store = store_for(tmp_path, [tmp_path / "keys" / "missing.pub"])  # the device still starts
    ref = make_ref(publish_model(server, "m.onnx"), server.url("m.onnx"), keys[0])
    with pytest.raises(UpdateError, match=r"keys that could not be loaded: .*missing.pub: public key not found"):
        store.stage(ref)
    assert server.requests == []
