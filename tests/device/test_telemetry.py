"""Telemetry contents from a real pipeline, the outbox and a sysfs tree written by the test."""

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.telemetry import SystemMonitor, TelemetryCollector, percentiles
from lepton_edge.fleet.outbox import Outbox
from lepton_edge.fleet.protocol import TopicKind, decode, encode
from tests.device.helpers import agent_config, wait_until


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "sys"
    for i, (kind, milli) in enumerate([("CPU-therm", "41500"), ("GPU-therm", "39000"), ("broken", "n/a")]):
        zone = root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    gpu = root / "devices" / "gpu.0"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text("537\n")
    return root


def test_system_monitor_reads_thermal_zones_and_jetson_gpu_load(sysfs, tmp_path):
    system = SystemMonitor(tmp_path / "not-created-yet", sysfs)
    temps = system.temperatures()
    assert temps["CPU-therm"] == 41.5 and temps["GPU-therm"] == 39.0 and "broken" not in temps
    assert system.gpu_percent() == pytest.approx(53.7)
    assert system.disk().total_bytes > 0  # measured on the nearest existing parent
    assert SystemMonitor(tmp_path, tmp_path / "empty").gpu_percent() is None


def test_orin_on_jetpack_6_gpu_load_comes_from_devfreq(tmp_path):
    """JetPack 6 has no /sys/devices/gpu.0/load: the GPU's devfreq device has it (17000000.gpu on Orin)."""
    root = tmp_path / "sys"
    for name, load in (("15340000.vic", "900"), ("17000000.gpu", "412")):
        device = root / "class" / "devfreq" / name / "device"
        device.mkdir(parents=True)
        (device / "load").write_text(load + "\n")
    assert SystemMonitor(tmp_path, root).gpu_percent() == pytest.approx(41.2)


def test_percentiles_are_forced_into_order():
    p = percentiles({"p50": 2.0, "p90": 1.9999999, "p99": 3.0, "max": 2.5})
    assert p.p50 <= p.p90 <= p.p99 <= p.max


def test_collector_reports_session_counters_and_the_outbox(tmp_path, color_model, sysfs):
    config = agent_config(tmp_path, color_model, 1883, "tel")
    controller = RuntimeController(config).start()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db", max_bytes=4096))
    try:
        wait_until(lambda: controller.stats.results >= 5)
        collector = TelemetryCollector("tel", controller, outbox, SystemMonitor(tmp_path, sysfs))
        controller.workloads["main"].stats.drops.add("too_old", 3)  # the device's drops are its workloads' drops
        outbox.put("lepton/v1/devices/tel/telemetry", b"x" * 3000, priority="low")
        outbox.put("lepton/v1/devices/tel/telemetry", b"y" * 3000, priority="low")  # evicts the first
        message = collector.build(session_id=7, seq=1, interval_s=0.5)
        assert decode(TopicKind.TELEMETRY, encode(message)) == message  # a valid protocol message
        assert message.drops == {"too_old": 3} and message.frames >= 0
        workload = message.workloads["main"]  # each workload's own figures: the single form is one, "main"
        assert workload.drops == {"too_old": 3} and workload.stream == controller.source_id
        assert workload.model == controller.artifact_id and workload.state == "running"
        assert message.temperatures_c["CPU-therm"] == 41.5 and message.gpu_percent == pytest.approx(53.7)
        assert message.outbox.depth == 1 and message.outbox.dropped["full_low_priority"] == 1
        wait_until(lambda: controller.stats.results >= 10)
        second = collector.build(session_id=7, seq=2, interval_s=0.5)
        assert second.fps > 0 and second.frames > message.frames
        assert second.workloads["main"].fps > 0 and second.workloads["main"].frames > workload.frames
        model = second.models[controller.artifact_id]  # the model's batched throughput, for the scheduler's capacity
        assert model.fps > 0 and model.batch_mean == 1.0 and 0 < model.busy <= 1 and model.streams == 1
        collector.new_session()  # counters restart with every lepton session
        fresh = collector.build(session_id=8, seq=1, interval_s=0.5)
        assert fresh.drops == {} and fresh.frames <= 2
    finally:
        controller.stop()
        outbox.close()


def test_an_idle_runtime_reports_no_rate_latency_source_or_model(tmp_path, color_model, sysfs):
    from tests.device.helpers import idle_config

    controller = RuntimeController(agent_config(tmp_path, color_model, 1883, "tel")).start()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    try:
        collector = TelemetryCollector("tel", controller, outbox, SystemMonitor(tmp_path, sysfs))
        wait_until(lambda: controller.stats.results >= 5)
        busy = collector.build(session_id=1, seq=1, interval_s=0.5)
        assert busy.latency_ms and busy.sources and busy.artifact_id == "color.onnx"
        assert controller.apply(idle_config(tmp_path, 1883, "tel"), 1).outcome == "applied"
        idle = collector.build(session_id=1, seq=2, interval_s=0.5)
        assert decode(TopicKind.TELEMETRY, encode(idle)) == idle  # a valid protocol message
        assert (idle.fps, idle.latency_ms, idle.frame_age_ms, idle.sources) == (0, {}, None, {})
        assert idle.artifact_id is None and idle.config_version == 1
        assert idle.frames >= busy.frames  # the session's totals are kept
    finally:
        controller.stop()
        outbox.close()
