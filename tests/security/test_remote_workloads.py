"""Issue #13, bad input: a multi-stream remote config (named streams, models, workloads, cascades, clips) that tries
to leave the device's sandbox or to exhaust it, replayed against a real device agent (production broker, mTLS).
Every part is checked as the config it runs; each attack must be refused naming the workload, stream or model at
fault, and the device keeps serving its last good config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.sandbox import GOOD_SOURCE, SandboxedDevice, sandboxed_agent
from tests.security.test_remote_config import assert_refused
from tests.support.production_broker import ProductionBroker

pytestmark = pytest.mark.integration

DEVICE = "cam-a"  # a device the test PKI has a client certificate for (one module at a time uses it)
AREA = "remote config (multi-stream)"


@pytest.fixture(scope="module")
def device(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path_factory
) -> Iterator[SandboxedDevice]:
    with sandboxed_agent(production_broker, pki, tmp_path_factory.mktemp("multi"), color_model, DEVICE) as sandboxed:
        good = sandboxed.push(sandboxed.workload())
        assert (good.outcome, good.errors) == ("applied", []), good.errors
        sandboxed.good_version = good.version
        yield sandboxed


def multi(device: SandboxedDevice, streams: int = 2, **workload: Any) -> dict[str, Any]:
    """``streams`` good workloads on the local model, the first one with ``workload`` sections over it."""
    model = str(device.agent.local_config.model.path)
    backend = {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0}
    names = [f"cam{i}" for i in range(streams)]
    config: dict[str, Any] = {
        "streams": {n: {"uri": GOOD_SOURCE} for n in names},
        "models": {"color": {"path": model, "backend": backend}},
        "workloads": {n: {"stream": n, "model": "color", "postprocess": {"type": "classify", "top_k": 2}}
                      for n in names},
    }
    config["workloads"][names[0]].update(workload)
    return config


def test_a_stream_reading_a_file_outside_the_allowed_folders_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("multi-stream: a stream reading /etc/shadow as a video", AREA)
    config = multi(device)
    config["streams"]["cam1"]["uri"] = "/etc/shadow"
    assert_refused(device, config, "workloads.cam1", "allowed folders", rec)


def test_a_cascade_model_outside_the_allowed_folders_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("multi-stream: a cascade classifier loaded from /tmp (a model file planted anywhere)", AREA)
    planted = Path("/tmp") / f"lepton-planted-{uuid.uuid4().hex[:8]}.onnx"
    planted.write_bytes(device.agent.local_config.model.path.read_bytes())
    try:
        config = multi(device, cascade=[{"model": "planted"}], postprocess={"type": "detect"})
        config["models"]["planted"] = {"path": str(planted), "task": "classify"}
        assert_refused(device, config, "models.planted: path", "allowed folders", rec)
    finally:
        planted.unlink()


def test_a_workload_sink_over_the_agents_state_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("multi-stream: one workload's jsonl sink over the agent's outbox", AREA)
    config = multi(device, sinks=[{"type": "jsonl", "path": str(device.state_dir / "outbox.db")}])
    assert_refused(device, config, "workloads.cam0: sinks.0.path", "agent's own state", rec)


def test_more_sinks_than_the_device_allows_across_workloads_are_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("multi-stream: 3 sinks in each of 4 workloads (12 files, over the device's 8)", AREA)
    config = multi(device, streams=4)
    for i, name in enumerate(config["workloads"]):
        config["workloads"][name]["sinks"] = [
            {"type": "jsonl", "path": f"w{i}-{j}.jsonl", "max_bytes": 1 << 20} for j in range(3)]
    assert_refused(device, config, "workloads: 12 sinks", "at most 8 sinks", rec)


def test_a_clip_folder_over_the_agents_state_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("multi-stream: a stream's clips written into the agent's state folder", AREA)
    config = multi(device)
    config["streams"]["cam0"]["clips"] = {"enabled": True, "folder": str(device.state_dir)}
    assert_refused(device, config, "workloads.cam0: source.clips.folder", "", rec)


@pytest.mark.parametrize(
    ("what", "patch", "field"),
    [
        ("a batch of 100000 frames", {"models": {"color": {"batch": {"max_batch": 100000}}}}, "max_batch"),
        ("a batch timeout of an hour", {"models": {"color": {"batch": {"timeout_ms": 3.6e6}}}}, "timeout_ms"),
        ("10000 crops per frame", {"cascade": {"max_crops": 10000}}, "max_crops"),
        ("a stream named ../../etc", {"rename": "../../etc"}, "streams"),
    ],
)
def test_out_of_bounds_numbers_and_names_are_refused(device: SandboxedDevice, attack, what, patch, field) -> None:
    rec = attack(f"multi-stream: {what}", AREA)
    config = multi(device)
    if "models" in patch:
        config["models"]["color"].update(patch["models"]["color"])
    if "cascade" in patch:
        config["models"]["c2"] = {"path": config["models"]["color"]["path"], "task": "classify"}
        cascade = [{"model": "c2", **patch["cascade"]}]
        config["workloads"]["cam0"].update(cascade=cascade, postprocess={"type": "detect"})
    if "rename" in patch:
        config["streams"][patch["rename"]] = config["streams"].pop("cam1")
        config["workloads"]["cam1"]["stream"] = patch["rename"]
    assert_refused(device, config, field, "", rec)
