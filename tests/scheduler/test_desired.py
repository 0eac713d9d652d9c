"""``scheduler.desired``: the device config a workload becomes, and the checks the API applies to it."""

from __future__ import annotations

from typing import Any

import pytest

from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES
from lepton_edge.scheduler.desired import desired_size, device_config_for, workload_problems
from lepton_edge.scheduler.models import Workload


def _workload(**fields: Any) -> Workload:
    return Workload(
        **{"workload_id": "w1", "source_uri": "rtsp://10.1.2.3/main", "model": "det.onnx", "required_fps": 5, **fields}
    )


def _fields(problems: list[dict[str, Any]]) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"][1:]): e["msg"] for e in problems}


def test_a_plain_workload_and_a_valid_config_have_no_problems() -> None:
    assert workload_problems(_workload()) == []
    config = {"postprocess": {"type": "detect", "conf_threshold": 0.4}, "pipeline": {"stats_interval_s": 2}}
    assert workload_problems(_workload(config=config)) == []
    assert device_config_for(_workload(config=config))["postprocess"]["conf_threshold"] == 0.4


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"threshold": 0.4}, "config.threshold", "Extra inputs"),
        ({"postprocess": {"type": "detect", "conf_threshold": "high"}}, "config.postprocess.detect.conf_threshold",
         "valid number"),
        ({"postprocess": {"type": "detect", "conf_threshold": 7}}, "config.postprocess.detect.conf_threshold",
         "less than or equal to 1"),
        ({"source": {"uri": "rtsp://x", "loop": "sometimes"}}, "config.source.loop", "valid boolean"),
        ({"idle": True}, "config", "idle: true runs no pipeline"),
        ({"device_id": "cam-7"}, "config.device_id", "identity is local"),
    ],
)  # fmt: skip
def test_schema_problems_name_the_field_of_the_workload(config: dict[str, Any], field: str, message: str) -> None:
    problems = _fields(workload_problems(_workload(config=config)))
    assert field in problems, problems
    assert message in problems[field], problems


def test_a_config_over_the_protocol_limit_is_one_problem() -> None:
    big = {"sinks": [{"type": "console", "note": "x" * MAX_PAYLOAD_BYTES}]}
    problems = workload_problems(_workload(config=big))
    assert len(problems) == 1 and problems[0]["loc"] == ("body", "config")
    assert f"{MAX_PAYLOAD_BYTES}-byte payload limit" in problems[0]["msg"]


def test_the_size_check_assumes_the_widest_envelope() -> None:
    config = device_config_for(_workload())
    assert desired_size(config) > len(str(config))
