"""Clip fetches over a real mosquitto: a device's command server (clips.read over real files) and the scheduler's
fetcher, with the link cut mid-fetch, the device away, the scheduler restarted and the clip changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.device.clip_commands import ClipCommands
from lepton_edge.device.commands import CommandServer
from lepton_edge.device.events import Rejections
from lepton_edge.fleet.mqtt import MqttClient
from lepton_edge.fleet.protocol import TopicKind, subscription
from lepton_edge.scheduler.clips import LISTING_REUSE_S, ClipFetcher, CommandClient, CommandError, FetchJob
from tests.device.test_clip_commands import write_clip
from tests.support.scheduler import wait_until
from tests.support.tiny_fs import TINY_FS_MIB, tiny_fs_mount  # noqa: F401 - the tiny_fs fixture

pytestmark = pytest.mark.integration

CHUNK = 16 * 1024


class ClipDevice:
    """The device's side of clip fetches: its own MQTT client and command server with the clip handlers, over
    ``folder``. ``on_read(args)`` runs before each clips.read (to cut the link at a chosen offset);
    ``offsets`` lists the offsets asked for."""

    def __init__(self, make_client: Callable[..., MqttClient], port: int, device_id: str, folder: Path) -> None:
        self.device_id = device_id
        self.offsets: list[int] = []
        self.on_read: Callable[[dict[str, Any]], None] | None = None
        self.stopping = threading.Event()
        self.client = make_client(port, device_id, session_expiry_s=0)
        self.commands = ClipCommands.for_folders([folder])
        handlers = {**self.commands.handlers(), "clips.read": self._read}
        self.rejected: list[str] = []
        rejections = Rejections(lambda kind, severity, message, details: self.rejected.append(message))
        self.server = CommandServer(device_id, self.client, rejections, handlers, self.stopping)
        self.client.subscribe(subscription(TopicKind.COMMAND, device_id), self.server.on_command)

    def _read(self, args: dict[str, Any]) -> Any:
        self.offsets.append(args.get("offset", 0))
        if self.on_read is not None:
            self.on_read(args)
        return self.commands.read(args)

    def start(self) -> ClipDevice:
        self.server.start()
        self.client.start()
        assert self.client.wait_connected(10) and self.client.wait_subscribed(5)
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.stop(2)
        self.client.stop(timeout=1)


def make_fetcher(
    make_client: Callable[..., MqttClient], port: int, clips_dir: Path, name: str, **options: Any
) -> ClipFetcher:
    client = make_client(port, f"sched-{name}", session_expiry_s=0)
    options = {"chunk_bytes": CHUNK, "timeout_s": 2.0, "retry_min_s": 0.1, "retry_max_s": 0.5, **options}
    fetcher = ClipFetcher(CommandClient(client, name), clips_dir, **options)
    client.start()
    assert client.wait_connected(10) and client.wait_subscribed(5)
    return fetcher.start()


def finished(fetcher: ClipFetcher, device_id: str, clip_id: str) -> Callable[[], FetchJob | None]:
    def check() -> FetchJob | None:
        job = fetcher.job(device_id, clip_id)
        return job if job is not None and job.state in ("complete", "failed") else None

    return check


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


def test_a_fetch_survives_a_broker_outage_and_resumes_byte_identical(
    tmp_path: Path, fresh_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    data = os.urandom(1024 * 1024 + 777)
    write_clip(tmp_path / "device-clips", "evt-1", data)
    device = ClipDevice(make_mqtt_client, fresh_broker.port, f"cam-{unique}", tmp_path / "device-clips")
    devices.append(device.start())
    cut_at = 256 * 1024
    cut = threading.Event()

    def outage() -> None:
        fresh_broker.kill()
        time.sleep(3.0)  # longer than the fetcher waits for an answer (2 s)
        fresh_broker.start()

    def cut_the_link(args: dict[str, Any]) -> None:
        if args["offset"] >= cut_at and not cut.is_set():
            cut.set()
            threading.Thread(target=outage, daemon=True).start()
            time.sleep(0.2)  # the answer to this read is lost with the broker

    device.on_read = cut_the_link
    fetcher = make_fetcher(make_mqtt_client, fresh_broker.port, tmp_path / "sched", "r1")
    fetchers.append(fetcher)
    fetcher.request(device.device_id, "evt-1", requested_by="token:test")
    job = wait_until(finished(fetcher, device.device_id, "evt-1"), 60, "the fetch to finish")

    assert cut.is_set() and job.state == "complete", job
    fetched = tmp_path / "sched" / device.device_id / "evt-1.mp4"
    assert fetched.read_bytes() == data
    assert job.sha256 == hashlib.sha256(data).hexdigest() and job.size == job.fetched == len(data)
    assert job.attempts >= 1 and job.restarts == 0  # it waited and retried, never started over
    assert not list(fetched.parent.glob("*.part*"))
    assert device.offsets.count(0) == 1  # resumed where it was, never from byte 0
    assert len(device.offsets) < 2 * (len(data) // CHUNK + 1)  # what had arrived was not asked for again
    assert fetcher.clip_path(device.device_id, "evt-1") == fetched


def test_a_device_that_is_away_is_retried_with_backoff_until_it_answers(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    data = os.urandom(100_000)
    write_clip(tmp_path / "device-clips", "late", data)
    device_id = f"cam-{unique}"
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}", timeout_s=0.5)
    fetchers.append(fetcher)
    fetcher.request(device_id, "late")
    waiting = wait_until(
        lambda: (j := fetcher.job(device_id, "late")) is not None and j.attempts >= 2 and j, 20, "two tries"
    )
    assert waiting.state in ("waiting", "fetching") and "no answer" in (waiting.error or "")
    assert waiting.fetched == 0
    devices.append(ClipDevice(make_mqtt_client, mqtt_broker.port, device_id, tmp_path / "device-clips").start())
    job = wait_until(finished(fetcher, device_id, "late"), 30, "the fetch once the device is back")
    assert job.state == "complete" and job.error is None
    assert (tmp_path / "sched" / device_id / "late.mp4").read_bytes() == data


def test_a_restarted_scheduler_resumes_from_the_part(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    data = os.urandom(600_000)
    write_clip(tmp_path / "device-clips", "evt-2", data)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", tmp_path / "device-clips")
    devices.append(device.start())
    first = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}")
    stopped = threading.Event()

    def stop_the_scheduler(args: dict[str, Any]) -> None:
        if args["offset"] >= 200_000 and not stopped.is_set():
            stopped.set()
            threading.Thread(target=first.stop, daemon=True).start()
            time.sleep(0.3)

    device.on_read = stop_the_scheduler
    first.request(device.device_id, "evt-2")
    wait_until(stopped.is_set, 20, "the first scheduler to stop")
    wait_until(lambda: first._thread is not None and not first._thread.is_alive(), 10, "its worker to end")
    settled: list[int] = []  # the reads the first scheduler had in flight reach the device, then nothing more
    wait_until(lambda: settled.append(len(device.offsets)) or settled[-5:] == [settled[-1]] * 5, 10, "quiet")
    part = tmp_path / "sched" / device.device_id / "evt-2.mp4.part"
    resume_at = part.stat().st_size
    assert 200_000 <= resume_at < len(data)
    device.on_read, seen = None, len(device.offsets)

    second = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r2-{unique}")
    fetchers.append(second)
    assert second.job(device.device_id, "evt-2") is not None  # found on disk, resumed without a request
    job = wait_until(finished(second, device.device_id, "evt-2"), 30, "the resumed fetch")
    assert job.state == "complete" and device.offsets[seen] == resume_at
    assert (tmp_path / "sched" / device.device_id / "evt-2.mp4").read_bytes() == data

    third = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r3-{unique}")
    fetchers.append(third)
    known = third.job(device.device_id, "evt-2")
    assert known is not None and known.state == "complete" and known.sha256 == hashlib.sha256(data).hexdigest()
    assert third.request(device.device_id, "evt-2").state == "complete"  # idempotent: nothing fetched again


def test_a_clip_that_changes_mid_fetch_is_fetched_again_from_the_start(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    folder = tmp_path / "device-clips"
    write_clip(folder, "evt-3", os.urandom(200_000))
    replacement = os.urandom(150_000)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", folder)
    devices.append(device.start())

    def replace(args: dict[str, Any]) -> None:
        if args["offset"] >= 64 * 1024 and device.on_read is not None:
            device.on_read = None
            (folder / "evt-3.mp4").unlink()
            write_clip(folder, "evt-3", replacement)

    device.on_read = replace
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}")
    fetchers.append(fetcher)
    fetcher.request(device.device_id, "evt-3")
    job = wait_until(finished(fetcher, device.device_id, "evt-3"), 30, "the fetch")
    assert job.state == "complete" and job.restarts == 1
    assert (tmp_path / "sched" / device.device_id / "evt-3.mp4").read_bytes() == replacement


def test_a_refused_clip_fails_with_the_devices_reason_and_a_retry_is_possible(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    folder = tmp_path / "device-clips"
    folder.mkdir()
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", folder)
    devices.append(device.start())
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}")
    fetchers.append(fetcher)
    fetcher.request(device.device_id, "nope")
    job = wait_until(finished(fetcher, device.device_id, "nope"), 20, "the refusal")
    assert job.state == "failed" and "not found among the complete clips" in (job.error or "")
    assert not (tmp_path / "sched" / device.device_id / "nope.mp4").exists()
    write_clip(folder, "nope", b"now it exists")
    assert fetcher.request(device.device_id, "nope").state == "queued"  # asking again retries a failed job
    assert wait_until(finished(fetcher, device.device_id, "nope"), 20, "the retry").state == "complete"
    with pytest.raises(ValueError, match="clip id"):
        fetcher.request(device.device_id, "../../etc/passwd")
    with pytest.raises(ValueError, match="cannot name a folder"):
        fetcher.request("..", "evt")


def test_the_device_lists_its_clips_and_the_scheduler_answers_for_a_silent_device(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    folder = tmp_path / "device-clips"
    for i in range(3):
        write_clip(folder, f"c{i}", b"x" * (i + 1), end_wall=100.0 + i)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", folder)
    devices.append(device.start())
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}", timeout_s=1.0)
    fetchers.append(fetcher)
    listed = fetcher.device_clips(device.device_id, limit=2)
    assert listed["source"] == "device" and [c["id"] for c in listed["clips"]] == ["c2", "c1"]
    write_clip(folder, "c3", b"new", end_wall=103.0)
    assert fetcher.device_clips(device.device_id, limit=1)["clips"][0]["id"] == "c2"  # the list of a moment ago
    time.sleep(LISTING_REUSE_S)
    assert [c["id"] for c in fetcher.device_clips(device.device_id, limit=2)["clips"]] == ["c3", "c2"]
    fetcher.request(device.device_id, "c0")
    wait_until(finished(fetcher, device.device_id, "c0"), 20, "the fetch")
    device.stop()
    devices.clear()
    known = fetcher.device_clips(device.device_id)
    assert known["source"] == "scheduler" and "no answer" in known["error"]
    assert known["clips"] == [{"id": "c0", "bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest(), "fetch": "complete"}]
    with pytest.raises(CommandError) as refused:
        fetcher.commands.call(device.device_id, "clips.read", {"id": "c0"}, timeout_s=0.3)
    assert refused.value.transient


def test_two_fetchers_sharing_a_folder_never_write_one_part_together(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    data = os.urandom(1024 * 1024)
    write_clip(tmp_path / "device-clips", "shared", data)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", tmp_path / "device-clips")
    devices.append(device.start())
    pair = [make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r{i}-{unique}") for i in (1, 2)]
    fetchers.extend(pair)
    for fetcher in pair:
        fetcher.request(device.device_id, "shared")
    jobs = [wait_until(finished(f, device.device_id, "shared"), 30, "both fetches") for f in pair]
    assert [j.state for j in jobs] == ["complete", "complete"]
    assert sum(j.attempts for j in jobs) >= 1  # one found the part locked and waited
    assert (tmp_path / "sched" / device.device_id / "shared.mp4").read_bytes() == data


def test_a_full_scheduler_disk_waits_and_the_fetch_resumes_when_space_comes_back(
    tiny_fs: Path, mqtt_broker: Any, make_mqtt_client: Any, fetchers: list, devices: list, unique: str
) -> None:
    data = os.urandom((TINY_FS_MIB + 2) << 20)  # larger than the scheduler's file system
    write_clip(tiny_fs.parent / "device-clips", "big", data)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, f"cam-{unique}", tiny_fs.parent / "device-clips")
    devices.append(device.start())
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tiny_fs / "clips", f"r-{unique}", chunk_bytes=128 << 10)
    fetchers.append(fetcher)
    fetcher.request(device.device_id, "big")
    full = wait_until(
        lambda: (j := fetcher.job(device.device_id, "big")) is not None and j.error and "No space" in j.error and j,
        30,
        "the fetch to find the disk full",
    )
    assert full.state in ("waiting", "fetching") and 0 < full.fetched < len(data)
    grown = subprocess.run(["mount", "-o", f"remount,size={TINY_FS_MIB + 8}m", str(tiny_fs)], capture_output=True)
    assert grown.returncode == 0, grown.stderr
    job = wait_until(finished(fetcher, device.device_id, "big"), 60, "the fetch once there is room")
    assert job.state == "complete" and job.restarts == 0
    assert (tiny_fs / "clips" / device.device_id / "big.mp4").read_bytes() == data
