"""Tracking and analytics sections pushed by remote config to a real agent through the test broker: a workload
with them is applied; oversized or malformed ones are rejected naming the field, and the device keeps its last
good config."""

import json
import time

import pytest

from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.protocol import DesiredConfig, TopicKind, config_desired_topic
from tests.device.helpers import Recorder, agent_config, wait_until

pytestmark = pytest.mark.integration

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10]]
ABUSE = [
    (
        {"tracking": {}, "analytics": {"zones": [{"name": f"z{i}", "polygon": SQUARE} for i in range(33)]}},
        "analytics.zones",
    ),
    (
        {"tracking": {}, "analytics": {"zones": [{"name": "z", "polygon": [[i, i % 7] for i in range(65)]}]}},
        "analytics.zones.0.polygon",
    ),
    (
        {"tracking": {}, "analytics": {"lines": [{"name": "l", "start": [0, 0], "end": [1e9, 5]}]}},
        "analytics.lines.0.end",
    ),
    (
        {"tracking": {}, "analytics": {"zones": [{"name": "z", "polygon": SQUARE, "loiter_s": -1}]}},
        "analytics.zones.0.loiter_s",
    ),
    ({"tracking": {"max_lost_s": 1e9}}, "tracking.max_lost_s"),
    ({"tracking": {"max_tracks": 10**9}}, "tracking.max_tracks"),
    ({"analytics": {"lines": [{"name": "l", "start": [0, 0], "end": [5, 5]}]}}, "add a tracking section"),
]


@pytest.fixture
def device(mqtt_broker, tmp_path, unique):
    model = DEMO_MODEL.resolve()  # a detector (tracking on a classifier is refused), in an allowed folder
    device_id = f"track-{unique}"
    rec = Recorder.connect(mqtt_broker.port, f"rec-{unique}", f"lepton/v1/devices/{device_id}/#")
    agent = DeviceAgent(
        agent_config(tmp_path, model, mqtt_broker.port, device_id, postprocess={"type": "detect"})
    ).start()
    version = 0

    def push(**sections):
        nonlocal version
        version += 1
        config = {
            "model": {"path": str(model)},
            "backend": {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0},
            "source": {"uri": "synthetic://shapes?fps=30&width=64&height=48"},
            "postprocess": {"type": "detect"},
            **sections,
        }
        document = DesiredConfig(version=version, config=config, issued_at=time.time(), issued_by="test")
        payload = json.dumps(document.model_dump(mode="json")).encode()
        assert rec.client.publish(config_desired_topic(device_id), payload, qos=1, retain=True).wait(5)
        return rec.wait(TopicKind.CONFIG_REPORTED, lambda r, v=version: r.version == v, timeout=20)

    try:
        wait_until(lambda: rec.of(TopicKind.RESULT))
        yield agent, push
    finally:
        agent.stop()
        rec.stop()


def test_bounded_sections_are_applied_and_abusive_ones_rejected_naming_the_field(device):
    agent, push = device
    good = push(
        tracking={"max_lost_s": 2},
        analytics={
            "coordinates": "normalized",
            "zones": [{"name": "door", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "loiter_s": 30}],
        },
    )
    assert (good.outcome, good.errors) == ("applied", []), good.errors
    for sections, field in ABUSE:
        report = push(**sections)
        assert report.outcome == "rejected", sections
        assert report.active_version == good.version
        assert any(field in error for error in report.errors), (field, report.errors)
    assert agent.config_version == good.version
