"""RuntimeController: live changes at frame boundaries, with real models, sources and onnxruntime."""

import json
import threading
import time

import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.device.controller import RuntimeController, plan_changes
from tests.device.helpers import LIVE_SOURCE, ListSink, agent_data, wait_until
from tests.device.models import fails_at_inference
from tests.support.onnx_models import mean_color_classifier


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "color": mean_color_classifier(folder / "color.onnx"),
        "color16": mean_color_classifier(folder / "color16.onnx", size=16),
        "fails": fails_at_inference(folder / "fails.onnx"),
    }


def make_config(tmp_path, model, **sections):
    return parse_config(agent_data(tmp_path, model, 1883, "ctl", **sections), "test")


@pytest.fixture
def running(tmp_path, models):
    """A started controller on a live synthetic source, with a list sink; stopped at teardown."""
    sinks: list[ListSink] = []

    def extra(config):
        sinks.append(ListSink())
        return [sinks[-1]]

    controller = RuntimeController(make_config(tmp_path, models["color"]), extra_sinks=extra).start()
    yield controller, sinks
    controller.stop(10)


def more_results(sink, n=5, timeout=10.0):
    start = len(sink.results)
    wait_until(lambda: len(sink.results) >= start + n, timeout)
    return start


def test_plan_restarts_only_what_changed(tmp_path, models):
    base = make_config(tmp_path, models["color"])
    same = make_config(tmp_path, models["color"])
    assert plan_changes(base, same) == frozenset()
    top1 = make_config(tmp_path, models["color"], postprocess={"type": "classify", "top_k": 1})
    assert plan_changes(base, top1) == {"postprocess"}
    model = make_config(tmp_path, models["color16"])
    assert plan_changes(base, model) == {"model"}
    source = make_config(tmp_path, models["color"], source={"uri": "synthetic://shapes?fps=20", "id": "b"})
    assert plan_changes(base, source) == {"source"}
    age = make_config(tmp_path, models["color"], source={"uri": LIVE_SOURCE, "max_frame_age_ms": 100})
    assert plan_changes(base, age) == {"frame_age"}


def test_threshold_change_applies_live_without_restarting(running, tmp_path, models):
    controller, sinks = running
    sink = sinks[0]
    more_results(sink)
    assert all(len(r.output) == 3 for r in sink.results)
    pipeline, backend = controller.pipeline, controller.pipeline.backend
    result = controller.apply(
        make_config(tmp_path, models["color"], postprocess={"type": "classify", "top_k": 1}), 1
    )
    assert result.outcome == "applied" and result.changes == {"postprocess"}
    start = more_results(sink)
    assert all(len(r.output) == 1 for r in sink.results[start + 2 :])  # frames in flight may use the old one
    assert controller.pipeline is pipeline and controller.pipeline.backend is backend
    assert controller.version == 1


def test_sinks_and_results_sinks_swap_live(running, tmp_path, models):
    controller, sinks = running
    more_results(sinks[0])
    out = tmp_path / "out" / "results.jsonl"
    new = make_config(
        tmp_path, models["color"], sinks=[{"type": "jsonl", "path": str(out), "flush_every": 1}]
    )
    assert controller.apply(new, 2).outcome == "applied"
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 3)
    more_results(sinks[0])  # the agent's sink stays in place when only the configured sinks change
    assert len(sinks) == 1
    first = json.loads(out.read_text().splitlines()[0])
    assert first["classes"][0]["label"] in ("red", "green", "blue")
    # a change of agent.results replaces the agent's sink (and keeps the jsonl one)
    changed = make_config(
        tmp_path,
        models["color"],
        sinks=[{"type": "jsonl", "path": str(out), "flush_every": 1}],
        agent={"results": {"max_rate_hz": 5}},
    )
    assert controller.apply(changed, 3).changes == {"results"}
    assert len(sinks) == 2
    more_results(sinks[1], 2)
    assert not sinks[0]._thread.is_alive()  # the old one was flushed and closed


def test_source_change_applies_live(running, tmp_path, models):
    controller, sinks = running
    sink = sinks[0]
    more_results(sink)
    new = make_config(
        tmp_path,
        models["color"],
        source={"uri": "synthetic://shapes?fps=30&width=80&height=60&seed=3", "id": "gate-2"},
    )
    assert controller.apply(new, 4).outcome == "applied"
    wait_until(lambda: any(r.source_id == "gate-2" for r in sink.results))
    start = more_results(sink)
    assert {r.source_id for r in sink.results[start + 2 :]} == {"gate-2"}
    assert controller.source_states() == {"gate-2": "streaming"}


def test_missing_source_file_is_rejected_and_nothing_changes(running, tmp_path, models):
    controller, sinks = running
    more_results(sinks[0])
    reader = controller.pipeline.reader
    bad = make_config(tmp_path, models["color"], source={"uri": str(tmp_path / "missing.mp4")})
    result = controller.apply(bad, 5)
    assert result.outcome == "rejected" and "missing.mp4" in result.errors[0]
    assert controller.pipeline.reader is reader and controller.version == 0
    more_results(sinks[0])


def test_model_swap_passes_the_health_check(running, tmp_path, models):
    controller, sinks = running
    sink = sinks[0]
    more_results(sink)
    old_backend = controller.pipeline.backend
    result = controller.apply(make_config(tmp_path, models["color16"]), 6)
    assert result.outcome == "applied" and result.changes == {"model"}
    assert controller.artifact_id == "color16.onnx"
    assert old_backend.session is None  # retired once the new model passed
    assert type(controller.pipeline.backend).__name__ == "OnnxRuntimeBackend"  # the probation guard is gone
    more_results(sink)


def test_model_that_fails_to_load_is_rejected_and_the_old_model_keeps_serving(running, tmp_path, models):
    controller, sinks = running
    sink = sinks[0]
    more_results(sink)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model at all")
    backend = controller.pipeline.backend
    result = controller.apply(make_config(tmp_path, corrupt), 7)
    assert result.outcome == "rejected" and "corrupt.onnx" in result.errors[0]
    assert controller.pipeline.backend is backend and backend.session is not None
    assert controller.artifact_id == "color.onnx" and controller.version == 0
    more_results(sink)


def test_model_failing_on_live_frames_is_rolled_back(running, tmp_path, models):
    controller, sinks = running
    sink = sinks[0]
    more_results(sink)
    backend = controller.pipeline.backend
    result = controller.apply(make_config(tmp_path, models["fails"]), 8)
    assert result.outcome == "rolled_back"
    assert any("inference failed" in e and "Gather" in e for e in result.errors)
    assert controller.pipeline.backend is backend and backend.session is not None  # kept alive, swapped back
    assert controller.version == 0 and controller.artifact_id == "color.onnx"
    start = more_results(sink)
    assert all(len(r.output) == 3 for r in sink.results[start + 2 :])  # the old model's real results


def test_too_few_frames_in_the_window_rolls_back(running, tmp_path, models):
    controller, sinks = running
    more_results(sinks[0])
    strict = make_config(
        tmp_path, models["color16"], agent={"health_check": {"window_s": 0.3, "min_frames": 10000}}
    )
    result = controller.apply(strict, 9)
    assert result.outcome == "rolled_back" and "min_frames=10000" in result.errors[0]
    assert controller.artifact_id == "color.onnx"
    more_results(sinks[0])


def test_swap_model_can_keep_the_old_bundle_alive(running):
    from lepton_edge.runtime.pipeline import ModelBundle

    controller, sinks = running
    pipeline = controller.pipeline
    more_results(sinks[0])
    old = pipeline.model
    from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    new_backend = OnnxRuntimeBackend(controller.config.model.path, in_pipeline=True).load()
    bundle = ModelBundle(new_backend, old.preprocessor, old.postprocessor)
    assert pipeline.swap_model(bundle, retire_old=False) is old
    more_results(sinks[0])
    assert old.backend.session is not None  # not retired: still usable
    assert pipeline.swap_model(old) is bundle  # swapping back retires the new one
    wait_until(lambda: new_backend.session is None)
    assert controller.stop(5)  # drains, though the retired model's runner closed before the next frame left it


def test_stop_interrupts_a_health_check(tmp_path, models):
    slow = make_config(tmp_path, models["color16"], agent={"health_check": {"window_s": 60, "min_frames": 1}})
    controller = RuntimeController(make_config(tmp_path, models["color"])).start()
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("r", controller.apply(slow, 1)))
    thread.start()
    wait_until(lambda: controller.pipeline.model.backend.__class__.__name__ == "_Guarded")
    controller.stop(10)
    thread.join(10)
    assert outcome["r"].outcome == "rolled_back" and "interrupted" in outcome["r"].errors[0]


def artifact(model):
    import hashlib

    data = model.read_bytes()
    return {"url": model.as_uri(), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def artifact_config(tmp_path, model):
    """A config whose model is ``model`` delivered as an artifact (``path`` is then not used)."""
    data = agent_data(tmp_path, model, 1883, "ctl")
    data["model"] = {"path": "unused.onnx", "artifact": artifact(model)}
    return parse_config(data, "test")


def test_artifact_updates_are_staged_activated_and_rolled_back_with_the_model(tmp_path, models):
    from lepton_edge.device.updates import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts", None, 10**8, allow_unsigned=True)
    sink = ListSink()
    controller = RuntimeController(
        make_config(tmp_path, models["color"]), extra_sinks=lambda c: [sink], artifacts=store
    ).start()
    try:
        more_results(sink)
        good = artifact_config(tmp_path, models["color16"])
        result = controller.apply(good, 1)
        assert result.outcome == "applied"
        good_slot = store.current()
        assert good_slot is not None and good_slot.read_bytes() == models["color16"].read_bytes()
        assert controller.artifact_id == "sha256:" + artifact(models["color16"])["sha256"]
        assert controller.config.model.path.name == "unused.onnx"  # the config as requested
        more_results(sink)

        bad = artifact_config(tmp_path, models["fails"])
        result = controller.apply(bad, 2)
        assert result.outcome == "rolled_back"
        assert store.current() == good_slot  # the previous slot is active again
        assert controller.artifact_id == "sha256:" + artifact(models["color16"])["sha256"]
        more_results(sink)
    finally:
        controller.stop()


def test_unsigned_artifacts_are_refused_without_a_key(tmp_path, models):
    from lepton_edge.device.updates import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts", None, 10**8)
    controller = RuntimeController(make_config(tmp_path, models["color"]), artifacts=store).start()
    try:
        new = artifact_config(tmp_path, models["color16"])
        result = controller.apply(new, 1)
        assert result.outcome == "rejected" and "no public key" in result.errors[0]
        assert store.current() is None and controller.artifact_id == "color.onnx"
    finally:
        controller.stop()


# -- idle: no pipeline ----------------------------------------------------------------------------------


def idle(tmp_path, **agent):
    from tests.device.helpers import idle_config

    return idle_config(tmp_path, 1883, "ctl", agent=agent or None)


def test_idle_config_stops_the_pipeline_and_a_workload_starts_a_new_one(running, tmp_path, models):
    controller, sinks = running
    more_results(sinks[0])
    old = controller.pipeline
    finished = {}
    waiter = threading.Thread(target=lambda: finished.setdefault("r", controller.wait_finished(10)))
    waiter.start()  # as run_device does: waiting for the pipeline to end by itself
    time.sleep(0.2)  # inside Pipeline.wait by now
    result = controller.apply(idle(tmp_path), 1)
    assert (result.outcome, result.changes) == ("applied", {"idle"})
    waiter.join(10)
    assert finished["r"] is False  # stopped for idleness, not ended by itself
    assert controller.idle and controller.pipeline is None and controller.version == 1
    assert old.wait(0)  # every stage ended: frames drained
    assert old.backend.session is None  # the model is unloaded
    assert sinks[0].closed  # the agent's sink was flushed and closed
    assert controller.source_states() == {} and controller.artifact_id is None
    assert controller.stats.source_state == "idle" and controller.stats.latency["infer"].count == 0
    results = controller.stats.results
    assert controller.wait_finished(0.3) is False  # being idle is not the end of the source
    assert controller.stats.results == results  # nothing runs

    result = controller.apply(make_config(tmp_path, models["color16"]), 2)
    assert (result.outcome, result.changes) == ("applied", {"pipeline"})
    assert not controller.idle and controller.pipeline is not old and controller.version == 2
    assert len(sinks) == 2  # a fresh agent sink for the new pipeline
    more_results(sinks[1])
    assert controller.artifact_id == "color16.onnx" and controller.stats.results > results  # one series
    assert type(controller.pipeline.backend).__name__ == "OnnxRuntimeBackend"  # passed the health check
    assert controller.source_states() == {LIVE_SOURCE: "streaming"}


def test_an_idle_runtime_rejects_what_cannot_run_and_stays_idle(tmp_path, models):
    sinks: list[ListSink] = []

    def extra(config):
        sinks.append(ListSink())
        return [sinks[-1]]

    controller = RuntimeController(idle(tmp_path), extra_sinks=extra).start()
    try:
        assert controller.idle and sinks == [] and controller.wait_finished(0.05) is False
        corrupt = tmp_path / "corrupt.onnx"
        corrupt.write_bytes(b"not an onnx model at all")
        result = controller.apply(make_config(tmp_path, corrupt), 1)
        assert result.outcome == "rejected" and "corrupt.onnx" in result.errors[0]
        assert controller.idle and controller.version == 0
        assert sinks and all(s.closed for s in sinks)  # the sinks made for it were closed

        missing = make_config(tmp_path, models["color"], source={"uri": str(tmp_path / "missing.mp4")})
        result = controller.apply(missing, 2)
        assert result.outcome == "rejected" and "missing.mp4" in result.errors[0] and controller.idle

        result = controller.apply(make_config(tmp_path, models["fails"]), 3)
        assert result.outcome == "rolled_back" and any("inference failed" in e for e in result.errors)
        assert controller.idle and controller.version == 0 and controller.stats.source_state == "idle"
        assert sinks[-1].closed  # the pipeline that failed was stopped

        assert controller.apply(idle(tmp_path, telemetry_interval_s=5), 4).changes == {"settings"}
        assert controller.apply(make_config(tmp_path, models["color"]), 5).outcome == "applied"
        more_results(sinks[-1])
    finally:
        controller.stop()
    assert controller.pipeline.backend.session is None


def test_an_idle_runtime_builds_but_starts_its_workload_only_on_start(tmp_path, models):
    sink = ListSink()
    controller = RuntimeController(idle(tmp_path), extra_sinks=lambda c: [sink])
    try:
        assert controller.apply(make_config(tmp_path, models["color"]), 1).outcome == "applied"
        assert not controller.idle and controller.stats.results == 0
        controller.start()
        more_results(sink)
    finally:
        controller.stop()


def test_a_pipeline_that_ends_by_itself_is_finished(tmp_path, models):
    controller = RuntimeController(make_config(tmp_path, models["color"]), max_frames=5).start()
    try:
        wait_until(lambda: controller.wait_finished(0.1))
        assert 0 < controller.stats.results <= 5
    finally:
        controller.stop()
