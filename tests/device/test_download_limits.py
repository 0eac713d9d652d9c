"""Download limits against misbehaving loopback HTTP servers: early close, trickle, too many bytes, a full disk.

Every failure names its rule and leaves no ``.part`` file behind, so a failing server can neither block an
update for long nor fill the state disk.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from lepton_edge.config.device import AgentConfig
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device import artifact_download
from lepton_edge.device.artifact_common import Cancellation
from lepton_edge.device.artifact_download import ArtifactDownloader
from lepton_edge.device.updates import ArtifactStore
from tests.support.http_server import LoopbackServer

pytestmark = pytest.mark.integration

BODY = bytes(range(256)) * 64  # 16 KiB


class BadServer(LoopbackServer):
    """Serves BODY at /<mode>, misbehaving as the mode says."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        mode = req.path.strip("/")
        req.send_response(200)
        req.close_connection = True
        if mode == "more":  # more than declared, without announcing it: no Content-Length, ended by closing
            req.send_header("Connection", "close")
            req.end_headers()
            body = BODY + b"\0" * len(BODY)
        else:
            req.send_header("Content-Length", str(len(BODY)))
            req.end_headers()
            body = BODY
        try:
            if mode == "early":  # announces the whole size, sends half and closes
                req.wfile.write(body[: len(body) // 2])
            elif mode == "silent":  # a first burst, then nothing until the test ends
                req.wfile.write(body[:1000])
                req.wfile.flush()
                self.stop.wait(60)
            elif mode == "trickle":  # about 20 bytes/s, after a first burst
                req.wfile.write(body[:1000])
                req.wfile.flush()
                for i in range(1000, len(body)):
                    if self.stop.wait(0.05):
                        return
                    req.wfile.write(body[i : i + 1])
                    req.wfile.flush()
            else:
                req.wfile.write(body)
            req.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.fixture
def bad_server() -> Iterator[BadServer]:
    srv = BadServer()
    yield srv
    srv.close()


def ref_for(url: str) -> ArtifactRef:
    return ArtifactRef(url=url, size=len(BODY), sha256=hashlib.sha256(BODY).hexdigest())


def test_a_server_closing_early_fails_and_leaves_no_part_file(tmp_path, bad_server):
    dest = tmp_path / "m.part"
    with pytest.raises(UpdateError, match=r"closed after 8192 of 16384 bytes.*partial file is deleted"):
        ArtifactDownloader(attempts=2, retry_delay_s=0.0).fetch(ref_for(bad_server.url("early")), dest)
    assert not dest.exists()


def test_a_trickling_server_fails_the_minimum_speed_rule_quickly(tmp_path, bad_server):
    dest = tmp_path / "m.part"
    downloader = ArtifactDownloader(min_bytes=200, min_window_s=1.0, retry_delay_s=0.0)
    started = time.monotonic()
    with pytest.raises(UpdateError, match=r"too slow, \d+ bytes in the last 1 s, under the minimum of 200 bytes"):
        downloader.fetch(ref_for(bad_server.url("trickle")), dest)
    assert time.monotonic() - started < 5
    assert not dest.exists()


def test_a_trickling_server_fails_the_overall_deadline(tmp_path, bad_server):
    dest = tmp_path / "m.part"
    downloader = ArtifactDownloader(deadline_s=1.0, retry_delay_s=0.0)  # no minimum speed: only the deadline
    started = time.monotonic()
    with pytest.raises(UpdateError, match=r"not downloaded within the deadline of 1 s"):
        downloader.fetch(ref_for(bad_server.url("trickle")), dest)
    assert time.monotonic() - started < 5
    assert not dest.exists()


def test_no_byte_beyond_the_declared_size_is_written(tmp_path, bad_server, monkeypatch):
    monkeypatch.setattr(artifact_download, "CHUNK_BYTES", 1000)  # several writes before the excess arrives
    dest = tmp_path / "m.part"
    sizes: list[int] = []

    def progress(have: int, total: int) -> None:
        sizes.append(have)

    with pytest.raises(UpdateError, match=r"sent more than the 16384 bytes of the reference"):
        ArtifactDownloader().fetch(ref_for(bad_server.url("more")), dest, progress)
    assert len(sizes) > 1 and max(sizes) <= len(BODY)  # written in pieces, never past the declared size
    assert not dest.exists()


def test_the_disk_reserve_is_checked_before_downloading(tmp_path, bad_server, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=len(BODY) + 1000))
    dest = tmp_path / "m.part"
    with pytest.raises(UpdateError, match=r"with 4096 kept free, agent.artifact_disk_reserve_bytes.*free some"):
        ArtifactDownloader(disk_reserve_bytes=4096).fetch(ref_for(bad_server.url("ok")), dest)
    assert not dest.exists()


def test_the_disk_reserve_is_checked_while_downloading(tmp_path, bad_server, monkeypatch):
    """The disk fills up during the download (another writer): it stops at the reserve, the part is deleted."""
    real = shutil.disk_usage
    dest = tmp_path / "m.part"
    calls = {"n": 0}

    def shrinking(path: object) -> object:
        calls["n"] += 1
        free = 1_000_000 if calls["n"] == 1 else 4096 + 100  # enough at the start, then almost full
        return real(path)._replace(free=free)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "disk_usage", shrinking)
    with pytest.raises(UpdateError, match=r"below the reserve of 4096 \(agent.artifact_disk_reserve_bytes\)"):
        ArtifactDownloader(disk_reserve_bytes=4096).fetch(ref_for(bad_server.url("ok")), dest)
    assert calls["n"] >= 2
    assert not dest.exists()


def test_the_store_takes_the_limits_and_deletes_the_part_file(tmp_path, bad_server):
    ref = ref_for(bad_server.url("trickle"))
    store = ArtifactStore(
        tmp_path / "state", None, 1 << 20, allow_unsigned=True, min_speed_bytes=200, min_speed_window_s=1.0
    )
    with pytest.raises(UpdateError, match="too slow"):
        store.stage(ref)
    assert not list((tmp_path / "state" / "staging").iterdir())


def test_the_agent_config_bounds_the_download_limits():
    from pydantic import ValidationError

    base = {"mqtt": {"host": "localhost", "client_id": "d1"}, "outbox": {}}
    agent = AgentConfig.model_validate(base)
    assert agent.artifact_disk_reserve_bytes == 64 * 1024**2
    assert agent.artifact_min_speed_bytes > 0 and agent.artifact_download_deadline_s > 0
    for field, value in [
        ("artifact_min_speed_bytes", -1),
        ("artifact_min_speed_window_s", 0),
        ("artifact_min_speed_window_s", 1e9),
        ("artifact_download_deadline_s", 0),
        ("artifact_download_deadline_s", 1e9),
        ("artifact_disk_reserve_bytes", -1),
        ("artifact_disk_reserve_bytes", 1 << 50),
    ]:
        with pytest.raises(ValidationError, match=field):
            AgentConfig.model_validate({**base, field: value})


def test_a_cancelled_download_stops_at_once_even_when_the_server_is_silent(tmp_path, bad_server):
    downloader = ArtifactDownloader(timeout_s=30.0, attempts=3)
    part = tmp_path / "silent.part"
    cancel = Cancellation()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(UpdateError, match=r"download cancelled after 1000 of 16384 bytes"):
        downloader.fetch(ref_for(bad_server.url("silent")), part, cancel=cancel)
    assert time.monotonic() - started < 5.0  # not the 30 s socket timeout, nor the retries
    assert not part.exists()
