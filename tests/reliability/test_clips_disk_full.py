"""Scenario 11: the clip folder's file system fills up while events trigger clips, then space comes back."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import av
import pytest

from lepton_edge.core.fileio import file_digest
from lepton_edge.data import DEMO_MODEL
from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    EVENT_SCENE,
    DeviceProcess,
    account_events,
    analytics_puts,
    events_config,
    wait_all_delivered,
    wait_until,
)
from tests.support.tiny_fs import TINY_FS_MIB, fill, tiny_fs_mount  # noqa: F401 (the tiny_fs fixture)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FULL_S = 3.0


def clip_figures(device: DeviceProcess) -> dict[str, Any]:
    """The clip sink's counters as the device last wrote them ({} before its first write)."""
    clips = device.sink_stats()["clips"]
    return clips[0] if clips else {}


def check_clip(folder: Path, clip_id: str) -> int:
    """A complete clip: its metadata names it, size and sha256 match the video, and PyAV decodes every frame of it.
    Returns the frames decoded; AssertionError naming the clip otherwise."""
    metadata = json.loads((folder / f"{clip_id}.json").read_text())
    video = folder / f"{clip_id}.mp4"
    assert metadata["id"] == clip_id, f"{clip_id}: metadata names {metadata['id']}"
    size, sha256 = file_digest(video)
    assert (size, sha256) == (metadata["bytes"], metadata["sha256"]), f"{clip_id}: size or sha256 differ (torn)"
    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == metadata["frames"], f"{clip_id}: decoded {frames} frames, metadata says {metadata['frames']}"
    return frames


def test_full_clip_disk_keeps_events_flowing_and_leaves_clips_complete_or_absent(
    scenario, broker, subscriber, device_id, devices, tmp_path, tiny_fs
):
    if not DEMO_MODEL.is_file():
        pytest.skip(f"{DEMO_MODEL} is missing (models/train_shapes_detector.py makes it)")
    record = scenario(
        "11 clips: disk full",
        f"the clip folder lives on a {TINY_FS_MIB} MiB tmpfs; while line crossings trigger clips (1 s before, 1 s "
        f"after) another file fills it to the last byte for {FULL_S:g} s or more, then is deleted",
    )
    folder = tiny_fs / "clips"
    clips = {"enabled": True, "folder": str(folder), "pre_s": 1.0, "post_s": 1.0, "max_clip_s": 3.0,
             "max_bytes": 2 * 2**20, "trigger_kinds": ["line_crossed"]}  # fmt: skip
    config = events_config(tmp_path, broker.port, device_id, source={"uri": EVENT_SCENE, "clips": clips})
    device = DeviceProcess(tmp_path / "device", config, sink_stats=True)
    devices.append(device)
    device.start()
    wait_until(lambda: clip_figures(device).get("clips_written", 0) >= 2, 60, "2 clips written before the fault")

    filler = fill(tiny_fs)
    full_wall = time.time()
    before = clip_figures(device)
    wait_until(lambda: clip_figures(device)["failed"] > before["failed"], 20, "a clip refused by the full disk")
    time.sleep(FULL_S)
    assert device.alive, f"the device died on a full clip disk:\n{device.log_tail()}"
    while_full = clip_figures(device)
    events_while_full = [r for r in analytics_puts(device) if r["t"] >= full_wall]
    delivered_while_full = [d for d in subscriber.all(TopicKind.EVENT) if d.at >= time.monotonic() - FULL_S]
    full_s = time.time() - full_wall
    record.note(
        f"disk full for {full_s:.1f} s: {while_full['failed'] - before['failed']} clip(s) failed "
        f"({while_full['clip_error']!r}); the device put {len(events_while_full)} analytics event(s) in its outbox "
        f"and {len(delivered_while_full)} event(s) were delivered in the last {FULL_S:g} s of it"
    )
    assert len(events_while_full) >= 3 and delivered_while_full, "events stopped while the clip disk was full"

    filler.unlink()
    freed_at = time.monotonic()
    written = clip_figures(device)["clips_written"]
    wait_until(lambda: clip_figures(device)["clips_written"] >= written + 1, 30, "a clip written after freeing space")
    record.recovery_s = time.monotonic() - freed_at
    record.recovery_means = (
        "from the filler file being deleted to the next clip written complete (clips end post_s after their "
        "last event, so this includes that wait; the device reads its counters every 0.25 s)"
    )

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    events = account_events(device, subscriber)
    record.set_events(events.summary())
    final = clip_figures(device)

    names = sorted(p.name for p in folder.iterdir())
    videos = {n[: -len(".mp4")] for n in names if n.endswith(".mp4")}
    metadata = {n[: -len(".json")] for n in names if n.endswith(".json")}
    strays = [n for n in names if not (n.endswith(".mp4") or n.endswith(".json"))]
    frames = {clip_id: check_clip(folder, clip_id) for clip_id in sorted(videos & metadata)}
    referenced = set()
    for e in subscriber.decoded(TopicKind.EVENT):
        snapshot = e.analytics.snapshot if e.analytics is not None else None
        if snapshot:
            referenced.add(snapshot.removeprefix("clip:").split("@")[0])
    present = referenced & videos
    record.metrics.update(
        {
            "clips_written": final["clips_written"],
            "clips_failed": final["failed"],
            "clips_deleted_quota": final["deleted_quota"],
            "clips_in_folder": len(frames),
            "frames_decoded": sum(frames.values()),
            "events_referencing_a_clip": len(referenced),
        }
    )
    record.note(
        f"{final['clips_written']} clip(s) written, {final['failed']} failed and counted; in the folder after the "
        f"stop: {len(frames)} complete clip(s) (metadata present, size and sha256 equal, {sum(frames.values())} "
        f"frames decoded by PyAV), {len(videos - metadata)} video(s) without metadata, {len(strays)} other file(s); "
        f"of the {len(referenced)} clip(s) events referenced, {len(present)} are in the folder and the rest absent "
        "(failed, or deleted for the quota)"
    )
    assert final["failed"] >= 1 and final["clips_written"] >= 3
    assert "space" in (while_full["clip_error"] or "").lower() or "full" in (while_full["clip_error"] or "").lower()
    assert strays == [], f"files left in the clip folder: {strays}"  # no .part, no temporary metadata
    assert videos == metadata, f"videos without metadata: {videos - metadata}; metadata alone: {metadata - videos}"
    assert events.lost == [] and events.conflicting == []
