"""Issue #14, item 5 (and #12's remote-config rules): tracking, analytics and events settings that arrive by remote
config, replayed against a real device agent behind the production broker; and forged analytics events refused
by the protocol codec the scheduler decodes with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import ProtocolError, TopicKind, decode
from tests.security.sandbox import SandboxedDevice, sandboxed_agent
from tests.security.test_remote_config import assert_refused
from tests.support.production_broker import ProductionBroker

pytestmark = pytest.mark.integration

DEVICE = "cam-b"
AREA = "remote config"
LINE = {"name": "gate", "start": [0.5, 0], "end": [0.5, 1]}


@pytest.fixture(scope="module")
def device(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path_factory
) -> Iterator[SandboxedDevice]:
    with sandboxed_agent(production_broker, pki, tmp_path_factory.mktemp("analytics"), color_model, DEVICE) as dev:
        good = dev.push(dev.workload())
        assert (good.outcome, good.errors) == ("applied", []), good.errors
        dev.good_version = good.version
        yield dev


def test_tracking_on_a_classifier_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("tracking and a line on a classifier (reported applied, would count nothing)", AREA)
    config = device.workload(tracking={}, analytics={"coordinates": "normalized", "lines": [LINE]})
    assert_refused(device, config, "tracking", "no boxes to track", rec)


@pytest.mark.parametrize(
    ("section", "field", "rule"),
    [
        ({"agent": {"results": {"mode": "everything"}}}, "agent.results.mode", "'frames' or 'events'"),
        ({"agent": {"results": {"mode": 10**9}}}, "agent.results.mode", "'frames' or 'events'"),
    ],
)
def test_an_unknown_results_mode_is_refused(device: SandboxedDevice, attack, section, field, rule) -> None:
    rec = attack(f"{field}: {section['agent']['results']['mode']!r}", AREA)
    assert_refused(device, device.workload(**section), field, rule, rec)


@pytest.mark.parametrize(
    ("analytics", "field", "rule"),
    [
        ({"counts_interval_s": 1e-6}, "analytics.counts_interval_s", "greater than or equal to 0.5"),
        ({"appeared": "always"}, "analytics.appeared", "valid boolean"),
    ],
)
def test_an_event_flood_by_analytics_settings_is_refused(device: SandboxedDevice, attack, analytics, field, rule):
    # a counts snapshot every frame would be a durable event per frame: the outbox and the link flooded
    rec = attack(f"{field}: {analytics[field.split('.')[1]]!r} (durable events on every frame)", AREA)
    assert_refused(device, device.workload(tracking={}, analytics=analytics), field, rule, rec)


GOOD_EVENT = {
    "device_id": DEVICE,
    "session_id": 3,
    "id": "a" + "0" * 31,
    "kind": "analytics.line_crossed",
    "severity": "info",
    "message": "person #4 line crossed gate (in)",
    "details": {},
    "timestamp": 1.7e9,
    "analytics": {"stream": "door", "track_id": 4, "name": "gate", "direction": "in", "capture_time": 1.7e9},
}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"analytics": {**GOOD_EVENT["analytics"], "dwell_s": 1e300}}, "analytics.dwell_s"),
        ({"analytics": {**GOOD_EVENT["analytics"], "confidence": 7}}, "analytics.confidence"),
        ({"analytics": {**GOOD_EVENT["analytics"], "stream": "s" * 10**4}}, "analytics.stream"),
        ({"analytics": {**GOOD_EVENT["analytics"], "track_id": -5}}, "analytics.track_id"),
        ({"analytics": None}, "needs its analytics detail"),
        ({"kind": "config.rejected"}, "only analytics.* events carry"),
        ({"kind": "analytics.teleported"}, "unknown analytics event kind"),
    ],
)
def test_forged_analytics_events_are_refused_by_the_codec(attack, change, where) -> None:
    rec = attack(f"forged analytics event ({where})", "protocol")
    assert decode(TopicKind.EVENT, json.dumps(GOOD_EVENT).encode()).analytics.name == "gate"
    payload = json.dumps({**GOOD_EVENT, **change}, allow_nan=False).encode()
    with pytest.raises(ProtocolError) as refused:
        decode(TopicKind.EVENT, payload)
    assert where in str(refused.value), refused.value
    rec.refused_because(str(refused.value)[:300])
    rec.figures["payload bytes"] = len(payload)
