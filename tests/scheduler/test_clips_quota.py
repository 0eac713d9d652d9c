"""The scheduler's clip folder (``clips`` in the scheduler config): where it is, its quota (the oldest fetched
clips are deleted first, counted) and the retention of fetched clips; fetches over a real mosquitto from a
device's real command server (``tests/scheduler/test_clips.py``)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.config.scheduler import load_scheduler_config, parse_scheduler_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.clips import ClipFetcher, default_clips_dir
from tests.device.test_clip_commands import write_clip
from tests.scheduler.test_clips import ClipDevice, finished, make_fetcher
from tests.support.scheduler import wait_until

KIB = 1024


@pytest.fixture
def fetchers() -> Iterator[list[ClipFetcher]]:
    made: list[ClipFetcher] = []
    yield made
    for fetcher in made:
        fetcher.stop(2)


@pytest.fixture
def devices() -> Iterator[list[ClipDevice]]:
    made: list[ClipDevice] = []
    yield made
    for device in made:
        device.stop()


def fetched(folder: Path) -> dict[str, int]:
    """The complete clips in a scheduler's clip folder: name -> bytes."""
    return {p.name: p.stat().st_size for p in folder.rglob("*.mp4")}


@pytest.mark.integration
def test_the_quota_deletes_the_oldest_fetched_clips_first_and_refuses_a_clip_over_it(
    tmp_path: Path, fresh_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    clips = {name: os.urandom(400 * KIB) for name in ("a", "b", "c")} | {"huge": os.urandom(1100 * KIB)}
    for name, data in clips.items():
        write_clip(tmp_path / "device-clips", name, data)
    device = ClipDevice(make_mqtt_client, fresh_broker.port, f"cam-{unique}", tmp_path / "device-clips")
    devices.append(device.start())
    folder = tmp_path / "sched"
    fetcher = make_fetcher(make_mqtt_client, fresh_broker.port, folder, f"r-{unique}", max_bytes=1024 * KIB)
    fetchers.append(fetcher)
    caplog.set_level(logging.INFO, logger="lepton_edge.scheduler.clips")

    for name in ("a", "b"):
        fetcher.request(device.device_id, name)
        job = wait_until(finished(fetcher, device.device_id, name), 30, f"clip {name}")
        assert job.state == "complete", job.error
    assert fetched(folder) == {"a.mp4": 400 * KIB, "b.mp4": 400 * KIB} and fetcher.pruned == {}

    fetcher.request(device.device_id, "c")  # 1200 KiB with a and b: a, the oldest, makes room
    job = wait_until(finished(fetcher, device.device_id, "c"), 30, "clip c")
    assert job.state == "complete", job.error
    assert fetched(folder) == {"b.mp4": 400 * KIB, "c.mp4": 400 * KIB}
    assert not (folder / device.device_id / "a.json").exists()
    assert fetcher.job(device.device_id, "a") is None  # forgotten: a new request fetches it again
    assert fetcher.pruned == {"quota": 1, "bytes": 400 * KIB}
    assert any("deleted 1 fetched clip(s), 409600 bytes (quota 1)" in r.getMessage() for r in caplog.records)

    fetcher.request(device.device_id, "huge")
    job = wait_until(finished(fetcher, device.device_id, "huge"), 30, "the clip over the quota")
    assert job.state == "failed" and "over the 1048576-byte limit" in (job.error or "")
    assert fetched(folder) == {"b.mp4": 400 * KIB, "c.mp4": 400 * KIB}  # nothing deleted for it


def complete_clip(folder: Path, device_id: str, clip_id: str, size: int, completed_at: float) -> None:
    """A fetched clip as the fetcher leaves it: ``<clip>.mp4`` and its record ``<clip>.json``."""
    (folder / device_id).mkdir(parents=True, exist_ok=True)
    (folder / device_id / f"{clip_id}.mp4").write_bytes(b"\0" * size)
    (folder / device_id / f"{clip_id}.json").write_text(json.dumps({"sha256": "0" * 64, "completed_at": completed_at}))


@pytest.mark.integration
def test_retention_deletes_old_fetched_clips_at_start_and_keeps_parts(
    tmp_path: Path, fresh_broker: Any, make_mqtt_client: Any, fetchers: list, unique: str
) -> None:
    folder, now = tmp_path / "sched", time.time()
    complete_clip(folder, "cam-1", "old", 1000, now - 7200)
    complete_clip(folder, "cam-1", "new", 2000, now - 60)
    complete_clip(folder, "cam-2", "older", 3000, now - 86400)
    part = folder / "cam-2" / "going.mp4.part"
    part.write_bytes(b"\0" * 500)
    os.utime(part, (now - 86400, now - 86400))  # an old part still resumes: it is never deleted
    fetcher = make_fetcher(make_mqtt_client, fresh_broker.port, folder, f"r-{unique}", retention_s=3600)
    fetchers.append(fetcher)
    assert fetched(folder) == {"new.mp4": 2000}
    assert part.exists() and fetcher.job("cam-2", "going") is not None
    assert {(j.device_id, j.clip_id) for j in fetcher.jobs()} == {("cam-1", "new"), ("cam-2", "going")}
    assert fetcher.pruned == {"retention": 2, "bytes": 4000}
    assert fetcher.prune(now=now + 3600) == {"retention": 1}  # later, the newer one too
    assert fetched(folder) == {}


def test_the_clip_folder_and_its_limits_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "scheduler.yaml"
    path.parent.mkdir()
    path.write_text("store_url: sqlite:///db/fleet.db\nclips: {folder: media/clips, max_bytes: 2097152, "
                    "retention_s: 86400}\n")  # fmt: skip
    config = load_scheduler_config(path)
    assert default_clips_dir(config) == (path.parent / "media" / "clips").resolve()
    fetcher = ClipFetcher(commands=None, clips_dir=default_clips_dir(config),  # type: ignore[arg-type]
                          max_bytes=config.clips.max_bytes, retention_s=config.clips.retention_s)  # fmt: skip
    assert (fetcher.max_bytes, fetcher.retention_s, fetcher.max_clip_bytes) == (2097152, 86400, 2097152)

    default = parse_scheduler_config({"store_url": f"sqlite:///{tmp_path}/fleet.db"})
    assert default_clips_dir(default) == tmp_path / "clips"  # beside the SQLite store, as before
    assert (default.clips.max_bytes, default.clips.retention_s) == (10 << 30, None)
    assert parse_scheduler_config({"clips": {"max_bytes": None}}).clips.max_bytes is None  # no quota

    with pytest.raises(ConfigError, match=r"clips\.max_bytes"):
        parse_scheduler_config({"clips": {"max_bytes": 1000}})
    with pytest.raises(ConfigError, match=r"clips\.quota"):
        parse_scheduler_config({"clips": {"quota": 1}})
