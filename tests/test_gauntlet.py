"""The models users bring, through every command a user runs on them: inspect, run, calibrate, build int8, compare.

Every Ultralytics task family (tiny exports whose batch-norm statistics were re-estimated on real frames and whose
heads were biased, so outputs depend on the frame: models/ultralytics/README.md), a real trained PP-OCR classifier
with dynamic height and width, the Silero voice-activity model with its recurrent state, and the project's own
models. Nothing may end in a traceback: each command succeeds or fails with the project's own error. An int8
build either passes its fidelity gate, recording what it measured, or fails that gate with the numbers; it never
succeeds silently. Builds of the random-weight models skip mixed precision (its layer ranking is slow and cannot
rescue random features) and, where the gate refuses them, are built again without it so that ``compare`` runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.cli import main
from lepton_edge.engines.artifacts import read_manifest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
ULTRALYTICS = MODELS / "ultralytics"
FRAMES = ULTRALYTICS / "frames"
SHAPES = ROOT / "calibration" / "shapes"
RANDOM_WEIGHTS = ("--mixed-precision", "off")
TEXT_LINE_FLAGS = ("--size", "192x48", "--color", "bgr", "--mean", "0.5", "--std", "0.5")
VAD_FLAGS = ("--constant", "sr=16000", "--state", "stateN=state")

Record = dict[str, Any]


def detections_with(key: str) -> Callable[[Record], bool]:
    """A result line whose detections all carry ``key`` (masks, keypoints, rotated boxes) with values."""
    return lambda line: all(d.get(key) for d in line["detections"])


def has(key: str) -> Callable[[Record], bool]:
    return lambda line: bool(line.get(key))


@dataclass(frozen=True)
class Case:
    """One model, the data each command reads, and what every result line must hold."""

    model: Path
    result: Callable[[Record], bool]
    source: Path = FRAMES
    calibration: Path = SHAPES
    flags: tuple[str, ...] = ()
    """Model flags every command takes (preprocessing, model inputs)."""
    build_flags: tuple[str, ...] = RANDOM_WEIGHTS

    @property
    def id(self) -> str:
        return self.model.stem


def _ultralytics(family: str, result: Callable[[Record], bool]) -> list[Case]:
    return [Case(path, result) for path in sorted((ULTRALYTICS / family).glob("*.onnx"))]


CASES = [
    *_ultralytics("detect", has("detections")),
    *_ultralytics("rtdetr", has("detections")),
    *_ultralytics("segment", detections_with("mask")),
    *_ultralytics("pose", detections_with("keypoints")),
    *_ultralytics("obb", detections_with("rotated_box")),
    *_ultralytics("classify", has("classes")),
    # Trained models, default build settings but the calibration method where the default fails the gate.
    Case(MODELS / "ppocr_cls.onnx", has("classes"), source=ROOT / "calibration" / "text_lines",
         calibration=ROOT / "calibration" / "text_lines", flags=TEXT_LINE_FLAGS,
         build_flags=("--calibration-method", "minmax")),
    Case(MODELS / "shapes_detector.onnx", has("detections"), build_flags=()),
    Case(MODELS / "silero_vad.onnx", lambda line: line["outputs"]["output"]["values"] is not None,
         source=MODELS / "silero_vad_audio.npz", calibration=MODELS / "silero_vad_audio.npz", flags=VAD_FLAGS),
]


class Cli:
    """The command line in this process: an exception escaping ``main`` (a user's traceback) fails the test."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
        self.caplog, self.capsys = caplog, capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Exit status, the error lines logged, what was printed."""
        self.caplog.clear()
        self.capsys.readouterr()
        with self.caplog.at_level(logging.INFO):
            status = main([str(a) for a in args])
        errors = "\n".join(r.getMessage() for r in self.caplog.records if r.levelno >= logging.ERROR)
        return status, errors, self.capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_model_through_every_command(case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(caplog, capsys)
    model = case.model
    status, errors, _ = cli("inspect", model)
    assert (status, errors) == (0, "")

    results = tmp_path / "results.jsonl"
    status, errors, _ = cli("run", "--model", model, "--source", case.source, "--sink", f"jsonl:{results}",
                            "--max-frames", "6", *case.flags)
    assert (status, errors) == (0, "")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 6
    assert any(case.result(line) for line in lines), f"no result with values: {lines[0]}"
    assert all(case.result(line) or not line.get("detections") for line in lines)

    table = tmp_path / "table.json"
    status, errors, _ = cli("calibrate", "--model", model, "--data", case.calibration, "--samples", "24",
                            "--out", table, "--no-progress", *case.flags)
    assert (status, errors) == (0, "")
    artifact = tmp_path / "int8"
    build = ("build", "--model", model, "--precision", "int8", "--calibration", table, "--fidelity-samples", "16",
             *case.flags, "--out", artifact)
    status, errors, _ = cli(*build, *case.build_flags)
    if status == 0:
        fidelity = read_manifest(artifact).fidelity
        assert fidelity is not None and fidelity.value is not None
        assert all(fidelity.value >= least for name, least in fidelity.required.items() if name != "boxes_kept")
    else:
        assert "fails the fidelity gate" in errors and "short by" in errors, errors
        assert not artifact.exists()
        status, errors, _ = cli(*build, "--no-fidelity-gate")
        assert (status, errors) == (0, "")

    status, errors, printed = cli("compare", "--reference", model, "--candidate", artifact, "--data",
                                  case.calibration, "--samples", "16", *case.flags, "--json")
    assert (status, errors) == (0, "")
    report = json.loads(printed)["report"]
    assert report["samples"] == 16 and report["fidelity"]["samples"] == 16
