"""Several workloads on one device: a shared, batched model; live add, change and remove of one workload without
touching the others; a failing workload isolated. Real onnxruntime, real synthetic sources."""

import threading
import time

import numpy as np
import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.controller import RuntimeController
from tests.device.helpers import ListSink, multi_data, wait_until
from tests.device.models import fails_at_inference
from tests.support.onnx_models import mean_color_classifier

FAST = "synthetic://shapes?fps=30&width=64&height=48"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"color": mean_color_classifier(folder / "color.onnx", batch="N"),
            "color16": mean_color_classifier(folder / "color16.onnx", size=16, batch="N")}


def config(tmp_path, models, workloads, **model_sections):
    data = multi_data(tmp_path, {"color": models["color"], **model_sections.pop("extra_models", {})}, workloads)
    for name, section in model_sections.items():
        data["models"][name].update(section)
    return parse_config(data, "test")


@pytest.fixture
def device(tmp_path, models):
    """``start(config) -> controller`` with a list sink per workload (``sinks[stream id]``); stopped at teardown."""
    sinks: dict[str, list[ListSink]] = {}
    controllers = []

    def start(cfg, sink_class=ListSink):
        def extra(view):
            sinks.setdefault(view.source.id, []).append(sink_class())
            return [sinks[view.source.id][-1]]

        controllers.append(RuntimeController(cfg, extra_sinks=extra).start())
        return controllers[-1]

    yield start, sinks
    for controller in controllers:
        controller.stop(10)


def results(sinks, name):
    return sinks[name][-1].results


def test_streams_share_one_model_and_batch(tmp_path, models, device):
    start, sinks = device
    cfg = config(tmp_path, models, {"a": {"uri": FAST, "model": "color"}, "b": {"uri": FAST + "&seed=7",
                                                                              "model": "color"}},
                 color={"batch": {"max_batch": 2, "timeout_ms": 30}})
    controller = start(cfg)
    assert len(controller.models.runners()) == 1  # loaded once for both streams
    wait_until(lambda: len(results(sinks, "a")) >= 20 and len(results(sinks, "b")) >= 20)
    for name in ("a", "b"):
        got = results(sinks, name)
        assert {r.source_id for r in got} == {name}
        assert [r.seq for r in got] == sorted(r.seq for r in got)  # in order within the stream
    batched = [r for name in ("a", "b") for r in results(sinks, name) if r.stage_ms.get("batch", 1) > 1]
    assert batched, "no inference took frames of both streams"
    per_workload = controller.workload_stats()
    assert set(per_workload) == {"a", "b"} and all(s.results >= 20 for s in per_workload.values())
    assert controller.stats.results >= sum(s.results for s in per_workload.values()) - 2


def test_a_workload_is_added_changed_and_removed_live_without_touching_the_others(tmp_path, models, device):
    start, sinks = device
    one = {"a": {"uri": FAST, "model": "color"}}
    controller = start(config(tmp_path, models, one))
    wait_until(lambda: len(results(sinks, "a")) >= 5)
    pipeline_a = controller.pipelines["a"]

    two = {**one, "b": {"uri": FAST + "&seed=3", "model": "color"}}
    added = controller.apply(config(tmp_path, models, two), 2)
    assert added.outcome == "applied" and added.workloads["b"].outcome == "applied", added
    assert set(added.workloads) == {"b"}  # a was not touched
    assert controller.pipelines["a"] is pipeline_a and len(controller.models.runners()) == 1
    wait_until(lambda: len(results(sinks, "b")) >= 5)

    before = len(results(sinks, "a"))
    changed = {**two, "b": {**two["b"], "postprocess": {"type": "classify", "top_k": 1}}}
    result = controller.apply(config(tmp_path, models, changed), 3)
    assert result.outcome == "applied" and result.changes == {"b:postprocess"}, result
    assert controller.pipelines["a"] is pipeline_a
    wait_until(lambda: any(len(r.output) == 1 for r in results(sinks, "b")[-3:]))

    removed = controller.apply(config(tmp_path, models, one), 4)
    assert removed.outcome == "applied" and set(removed.workloads) == {"b"}
    assert set(controller.pipelines) == {"a"} and controller.pipelines["a"] is pipeline_a
    assert sinks["b"][-1].closed  # b's sinks were flushed and closed
    wait_until(lambda: len(results(sinks, "a")) >= before + 10)  # a kept running all along
    seqs = [r.seq for r in results(sinks, "a")]
    assert seqs == sorted(seqs)
    assert controller.stats.results >= len(results(sinks, "a"))  # b's counts stay in the device's totals


def test_a_failing_workload_is_refused_alone(tmp_path, models, device):
    start, sinks = device
    one = {"a": {"uri": FAST, "model": "color"}}
    controller = start(config(tmp_path, models, one))
    bad = config(tmp_path, models, {**one, "b": {"uri": FAST, "model": "broken"}},
                 extra_models={"broken": tmp_path / "missing.onnx"})
    result = controller.apply(bad, 2)
    assert result.outcome == "rejected" and set(result.workloads) == {"b"}
    assert result.workloads["b"].outcome == "rejected" and "missing.onnx" in result.errors[0]
    assert result.errors[0].startswith("workload b:")
    assert set(controller.pipelines) == {"a"} and controller.version == 0  # the last config applied in full
    start_a = len(results(sinks, "a"))
    wait_until(lambda: len(results(sinks, "a")) >= start_a + 5)


def test_a_model_change_loads_the_new_model_once_and_closes_the_old_one_with_its_last_user(tmp_path, models,
                                                                                          device):
    start, sinks = device
    two = {"a": {"uri": FAST, "model": "color"}, "b": {"uri": FAST + "&seed=2", "model": "color"}}
    controller = start(config(tmp_path, models, two))
    old = controller.models.runners()[0]
    moved = {"a": {"uri": FAST, "model": "color16"}, "b": two["b"]}
    result = controller.apply(config(tmp_path, models, moved, extra_models={"color16": models["color16"]}), 2)
    assert result.outcome == "applied", result
    assert len(controller.models.runners()) == 2 and old in controller.models.runners()  # b still runs it
    both = {"a": {"uri": FAST, "model": "color16"}, "b": {"uri": FAST + "&seed=2", "model": "color16"}}
    data = multi_data(tmp_path, {"color16": models["color16"]}, both)
    result = controller.apply(parse_config(data, "test"), 3)
    assert result.outcome == "applied", result
    assert len(controller.models.runners()) == 1 and old not in controller.models.runners()
    start_b = len(results(sinks, "b"))
    wait_until(lambda: len(results(sinks, "b")) >= start_b + 5)


class ImageSink(ListSink):
    needs_image = True  # results keep their frame, to check the crops against


def mean_rgb_argmax(image, box):
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    region = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)].reshape(-1, 3).astype(np.float64)
    means = region.mean(axis=0)[::-1]  # BGR frame -> R, G, B as the classifier's tensor has them
    ordered = np.sort(means)
    return int(np.argmax(means)), (ordered[-1] - ordered[-2]) / max(ordered[-1], 1.0)


def test_a_cascade_classifies_crops_of_real_detections(tmp_path, models, device):
    """The shapes detector on the synthetic scene, a colour classifier on the crops of its detections: each
    classified detection carries the colour its own pixels have."""
    start, sinks = device
    workloads = {"cam": {"uri": "synthetic://shapes?fps=15&seed=4", "model": "shapes",
                         "postprocess": {"type": "detect", "conf_threshold": 0.4},
                         "cascade": [{"model": "color", "min_size": 12, "max_crops": 4}]}}
    data = multi_data(tmp_path, {"shapes": DEMO_MODEL, "color": models["color"]}, workloads)
    data["models"]["color"]["task"] = "classify"
    start(parse_config(data, "test"), ImageSink)
    sink = sinks["cam"][-1]
    sink_images = []

    def classified():
        found = [r for r in sink.results if len(r.output) and "color" in r.output.attributes]
        sink_images[:] = found
        return sum(int((r.output.attributes["color"].class_ids >= 0).sum()) for r in found) >= 10

    wait_until(classified, 20)
    checked = 0
    for result in sink_images:
        out, answer = result.output, result.output.attributes["color"]
        assert len(answer) == len(out)
        small = np.minimum(out.boxes[:, 2] - out.boxes[:, 0], out.boxes[:, 3] - out.boxes[:, 1]) < 12
        assert (answer.class_ids[small] == -1).all()  # below min_size: not classified
        assert (answer.class_ids >= 0).sum() <= 4  # max_crops
        for i in np.flatnonzero(answer.class_ids >= 0):
            expected, margin = mean_rgb_argmax(result.image, out.boxes[i])
            if margin > 0.05:
                assert answer.class_ids[i] == expected
                assert answer.labels[expected] in ("red", "green", "blue")
                checked += 1
    assert checked >= 5
    item = next(d for r in sink_images for d in r.output.to_dict()["detections"] if "attributes" in d)
    assert set(item["attributes"]["color"]) == {"label", "class_id", "score"}


def test_a_workload_failing_while_running_is_isolated_and_reported(tmp_path, models, device):
    """A model that raises on real frames stops its own workload only: the other keeps delivering, and telemetry's
    report says which workload failed and why."""
    start, sinks = device
    fails = fails_at_inference(tmp_path / "fails.onnx")
    workloads = {"good": {"uri": FAST, "model": "color"}, "bad": {"uri": FAST, "model": "fails"}}
    controller = start(parse_config(multi_data(tmp_path, {"color": models["color"], "fails": fails}, workloads),
                                    "test"))
    deadline = time.monotonic() + 20
    while "bad" not in controller.failed and time.monotonic() < deadline:
        assert not controller.wait_finished(0.2)
    assert set(controller.workloads) == {"good"} and "bad" in controller.failed
    report = controller.workload_reports()["bad"]
    assert report.state == "failed" and "Gather" in (report.error or "")
    before = len(results(sinks, "good"))
    wait_until(lambda: len(results(sinks, "good")) >= before + 5)
    again = controller.apply(parse_config(multi_data(tmp_path, {"color": models["color"]},
                                                     {"good": workloads["good"]}), "test"), 2)
    assert again.outcome == "applied" and not controller.failed  # left out of the new config: gone


def test_stop_during_the_health_check_of_an_added_workload_leaves_nothing_running(tmp_path, models, device):
    """A stop that lands while a new workload is on probation ends the probation, and neither the workload nor
    its model's inference thread outlives the stop (a thread left inside onnxruntime aborts the process at exit)."""
    start, _ = device
    one = {"a": {"uri": FAST, "model": "color"}}
    controller = start(config(tmp_path, models, one))
    two = multi_data(tmp_path, {"color": models["color"], "color16": models["color16"]},
                     {**one, "b": {"uri": FAST, "model": "color16"}})
    two["agent"]["health_check"] = {"window_s": 60, "min_frames": 1000}
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("r", controller.apply(parse_config(two, "t"), 2)))
    thread.start()
    wait_until(lambda: len(controller.models.runners()) == 2)  # b's model is loaded: b is on probation
    started = time.monotonic()
    assert controller.stop(10)
    thread.join(10)
    assert time.monotonic() - started < 8 and outcome["r"].workloads["b"].outcome != "applied"
    assert "b" not in controller.workloads
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("lepton-infer")], 5)
