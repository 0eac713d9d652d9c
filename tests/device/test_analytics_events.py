"""Analytics events from a real agent through a real mosquitto: the demo detector on the synthetic scene, lines
changed live by remote config, events through the durable outbox with stable ids, and the events-only mode."""

import json
import time

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.core.results import Detections, Result
from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.results import AnalyticsEventSink, analytics_events
from lepton_edge.fleet.outbox import Outbox
from lepton_edge.fleet.protocol import DesiredConfig, TopicKind, config_desired_topic, decode
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame, Geometry
from tests.device.helpers import Recorder, agent_config, agent_data, wait_until
from tests.device.test_durability import saving_broker  # noqa: F401 - the broker that keeps sessions on a kill
from tests.support import agent_process

pytestmark = pytest.mark.integration

MODEL = DEMO_MODEL.resolve()  # inside the folders the remote policy allows (agent_data adds the model's folder)
SCENE = "synthetic://shapes?fps=30&width=160&height=120"
VERTICAL = {"name": "vertical", "start": [0.5, 0], "end": [0.5, 1]}
HORIZONTAL = {"name": "horizontal", "start": [0, 0.5], "end": [1, 0.5]}


def workload(*lines, counts_interval_s=60):
    return {
        "model": {"path": str(MODEL)},
        "backend": {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0},
        "source": {"uri": SCENE},
        "postprocess": {"type": "detect"},
        "tracking": {},
        "analytics": {"coordinates": "normalized", "lines": list(lines), "counts_interval_s": counts_interval_s},
    }


def start_agent(tmp_path, port, device, sections, results):
    data = {k: v for k, v in sections.items() if k not in ("model", "backend", "source")}
    config = agent_config(tmp_path, MODEL, port, device, source=SCENE, agent={"results": results}, **data)
    return DeviceAgent(config).start()


def analytics(rec, kind=None):
    """Analytics events received, in arrival order (duplicates included)."""
    return [e for e in rec.of(TopicKind.EVENT) if e.kind.startswith("analytics.") and (kind is None or e.kind == kind)]


def crossed(rec, name):
    return [e for e in analytics(rec, "analytics.line_crossed") if e.analytics.name == name]


def event_sink(agent):
    return next(s for s in agent.controller.extra_sinks if isinstance(s, AnalyticsEventSink))


def test_lines_change_live_and_events_arrive_once_without_results(mqtt_broker, tmp_path, unique):
    device = f"an-{unique}"
    rec = Recorder.connect(mqtt_broker.port, f"rec-{unique}", f"lepton/v1/devices/{device}/#")
    agent = start_agent(tmp_path, mqtt_broker.port, device, workload(VERTICAL), {"mode": "events"})
    try:
        first = wait_until(lambda: crossed(rec, "vertical"), 30)[0]
        reader = agent.controller.pipeline.reader
        desired = DesiredConfig(version=1, config=workload(HORIZONTAL), issued_at=time.time(), issued_by="test")
        payload = json.dumps(desired.model_dump(mode="json")).encode()
        assert rec.client.publish(config_desired_topic(device), payload, qos=1, retain=True).wait(5)
        report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1, timeout=20)
        assert (report.outcome, report.errors) == ("applied", [])
        wait_until(lambda: crossed(rec, "horizontal"), 30)
        assert agent.controller.pipeline.reader is reader  # the source was not reopened
        agent.stop()  # what the sink queued is flushed to the broker; let the broker pass it on
        queued = event_sink(agent).queued
        wait_until(lambda: len({e.id for e in analytics(rec)}) >= queued, 10)
    finally:
        agent.stop()
        rec.client.publish(config_desired_topic(device), b"", qos=1, retain=True).wait(5)
        rec.stop()
    assert first.analytics.stream and first.analytics.track_id is not None and first.analytics.direction
    assert first.analytics.snapshot is None and abs(first.timestamp - time.time()) < 120
    assert first.analytics.capture_time == first.timestamp
    events = analytics(rec)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) == queued  # every event queued arrived, once
    assert not rec.raw(TopicKind.RESULT)  # events only: no per-frame result messages


def test_no_event_is_lost_across_a_broker_outage(saving_broker, tmp_path, unique):  # noqa: F811
    device = f"ao-{unique}"
    rec = Recorder.connect(saving_broker.port, f"rec-{unique}", f"lepton/v1/devices/{device}/events")
    lines = (VERTICAL, HORIZONTAL)
    agent = start_agent(
        tmp_path, saving_broker.port, device, workload(*lines, counts_interval_s=0.5), {"max_rate_hz": 5}
    )
    try:
        wait_until(lambda: analytics(rec, "analytics.line_crossed"), 30)
        saving_broker.kill()
        wait_until(lambda: not agent.connected)
        sink = event_sink(agent)
        during = sink.queued
        wait_until(lambda: sink.queued >= during + 5, 30)  # crossings and counts while the broker is down
        pending = [m for m in agent.outbox.pending() if m.topic.endswith("/events")]
        assert len(pending) >= 5
        saving_broker.start()
        wait_until(lambda: agent.connected and agent.outbox.depth() == 0, 30)
        agent.stop()
        queued = event_sink(agent).queued
        wait_until(lambda: len({e.id for e in analytics(rec)}) >= queued, 10)
    finally:
        agent.stop()
        rec.stop()
    events = analytics(rec)
    unique_ids = {e.id for e in events}
    assert len(unique_ids) == queued  # nothing lost; duplicates (resent after the outage) share their id
    by_id = {}
    for e in events:
        assert by_id.setdefault(e.id, e) == e  # a duplicate is the same event
    assert any(e.kind == "analytics.counts" and e.analytics.counts["lines"] for e in events)


def test_no_event_is_lost_when_the_agent_is_killed_during_an_outage(saving_broker, tmp_path, unique):  # noqa: F811
    device = f"ak-{unique}"
    rec = Recorder.connect(saving_broker.port, f"rec-{unique}", f"lepton/v1/devices/{device}/events")
    sections = {k: v for k, v in workload(VERTICAL, HORIZONTAL, counts_interval_s=0.5).items() if k == "analytics"}
    config = agent_data(
        tmp_path,
        MODEL,
        saving_broker.port,
        device,
        source=SCENE,
        postprocess={"type": "detect"},
        tracking={},
        agent={"results": {"mode": "events"}},
        **sections,
    )
    proc = agent_process.start(config, tmp_path / "agent.json")
    try:
        wait_until(lambda: analytics(rec), 60)
        saving_broker.kill()
        time.sleep(2.0)  # events go into the outbox
        proc.kill()
        proc.wait(10)
        with Outbox(OutboxConfig(path=tmp_path / f"state-{device}" / "outbox.db")) as outbox:
            stored = [decode(TopicKind.EVENT, m.payload) for m in outbox.pending() if m.topic.endswith("/events")]
        stored = [e for e in stored if e.kind.startswith("analytics.")]
        assert len(stored) >= 3  # counts every 0.5 s at least
        saving_broker.start()
        proc = agent_process.start(config, tmp_path / "agent.json")
        wanted = {e.id for e in stored}
        wait_until(lambda: wanted <= {e.id for e in analytics(rec)}, 60)
    finally:
        proc.kill()
        proc.wait(10)
        rec.stop()
    received = {e.id: e for e in analytics(rec)}
    assert all(received[e.id] == e for e in stored)  # the same events, byte for byte, after the restart


def frame_result(frame, stream, wall_time):
    return Result(Detections.empty(), 7, stream, 10.0, wall_time, {}, done_ts=10.01, analytics=frame)


def test_event_ids_are_stable_and_tell_events_apart():
    crossing = AnalyticsEvent("line_crossed", "gate", 4, 0, "person", 10.0, direction="in")
    frame = AnalyticsFrame((crossing,), {}, {}, Geometry({}, {}), counts={"lines": {}, "zones": {}})
    result = frame_result(frame, "door", 1.7e9)
    first, again = analytics_events(result, "cam", 1), analytics_events(result, "cam", 2)
    assert [e.kind for e in first] == ["analytics.line_crossed", "analytics.counts"]
    assert [e.id for e in first] == [e.id for e in again]  # the same event in another session: the same id
    later, elsewhere = frame_result(frame, "door", 1.7e9 + 0.001), frame_result(frame, "gate-2", 1.7e9)
    ids = {e.id for r in (result, later, elsewhere) for e in analytics_events(r, "cam", 1)}
    assert len(ids) == 6
    assert first[0].timestamp == first[0].analytics.capture_time == 1.7e9


def test_events_carry_their_clip_and_the_clip_is_listed_and_read_over_mqtt(mqtt_broker, tmp_path, unique):
    """A stream with clips: each line crossing's event names its clip (``snapshot``: ``clip:<id>@<offset>``), the
    clip is written complete (mp4 beside its metadata, never a .part) and served by clips.list / clips.read."""
    device = f"clips-{unique}"
    rec = Recorder.connect(mqtt_broker.port, f"rec-{device}", f"lepton/v1/devices/{device}/#")
    folder = tmp_path / "clips"
    source = {"uri": SCENE + "&seed=5", "clips": {"enabled": True, "folder": str(folder), "pre_s": 1.0,
                                                 "post_s": 1.0, "max_clip_s": 5.0}}
    sections = {k: v for k, v in workload(VERTICAL).items() if k not in ("model", "backend", "source")}
    config = agent_config(tmp_path, MODEL, mqtt_broker.port, device, source=source, **sections)
    agent = DeviceAgent(config).start()
    try:
        crossed = wait_until(lambda: [e for e in analytics(rec, "analytics.line_crossed") if e.analytics.snapshot],
                             30)
        reference = crossed[0].analytics.snapshot
        clip_id = reference.removeprefix("clip:").split("@")[0]
        wait_until(lambda: (folder / f"{clip_id}.json").exists(), 20)
        metadata = json.loads((folder / f"{clip_id}.json").read_text())
        assert crossed[0].id in metadata["event_ids"]
        assert (folder / f"{clip_id}.mp4").stat().st_size == metadata["bytes"]
        assert not list(folder.glob("*.part"))
        listed = agent.clip_commands.list({})
        assert clip_id in [c["id"] for c in listed["clips"]]
        chunk = agent.clip_commands.read({"id": clip_id, "offset": 0, "length": 1024})
        assert chunk["size"] == metadata["bytes"] and chunk["sha256"] == metadata["sha256"]
    finally:
        agent.stop()
        rec.stop()
