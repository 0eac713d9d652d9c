"""run, calibrate, build, compare and bench share the preprocessing flags, and the flags take effect."""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from lepton_edge.cli import main
from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.artifacts import read_manifest
from lepton_edge.engines.calibration import load_table
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

REPO = Path(__file__).resolve().parents[2]
DYNAMIC = REPO / "models" / "ultralytics" / "detect" / "yolo11t-detect_dynamic.onnx"
"""Ultralytics dynamic=True export: input [batch, 3, height, width], metadata imgsz [160, 160], stride 32."""
FRAMES = REPO / "models" / "ultralytics" / "frames"
COMMANDS = ("run", "calibrate", "build", "compare", "bench")
FLAGS = ("--size", "--mean", "--std", "--scale", "--color", "--resize", "--layout", "--interpolation")


@pytest.fixture
def fed(monkeypatch):
    """Every tensor onnxruntime is given (warm-up included), as copies."""
    tensors = []
    real = OnnxRuntimeBackend._infer

    def spy(self, feeds):
        tensors.append(np.array(next(iter(feeds.values()))))
        return real(self, feeds)

    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", spy)
    return tensors


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The dynamic model built at 160x160 and at 224x224 by `lepton-edge build --size`."""
    out = tmp_path_factory.mktemp("built")
    for size in ("160x160", "224x224"):
        assert main(["build", "--model", str(DYNAMIC), "--out", str(out / size), "--size", size]) == 0
    return out


def shapes(tensors):
    return {t.shape for t in tensors}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_model_command_has_the_preprocessing_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in (*FLAGS, "--config")), out
    assert "rgb|bgr|gray" in out and "letterbox|stretch|center-crop|none" in out


def test_flags_layer_over_the_config_file(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text("model: {path: m.onnx}\nsource: {uri: x.mp4}\npreprocess: {color: bgr, mean: [0.5], "
                      "size: [320, 320]}\n")
    parser = argparse.ArgumentParser()
    add_preprocess_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--size", "224x160", "--std", "0.2,0.3,0.4", "--scale", "1"])
    got = preprocess_from_args(args)
    assert (got.size, got.color, got.mean, got.std, got.scale) == ((224, 160), "bgr", (0.5,), (0.2, 0.3, 0.4), 1.0)
    assert got.model_fields_set == {"size", "color", "mean", "std", "scale"}, "unset fields stay unset below"
    assert preprocess_from_args(parser.parse_args([])) is None
    assert preprocess_from_args(parser.parse_args(["--size", "96"])) == PreprocessConfig(size=(96, 96))
    (tmp_path / "only.yaml").write_text("preprocess: {resize: stretch}\n")
    assert preprocess_from_args(parser.parse_args(["--config", str(tmp_path / "only.yaml")])).resize == "stretch"
    (tmp_path / "bad.yaml").write_text("preprocess: {resize: squash}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml preprocess: resize: Input should be"):
        preprocess_from_args(parser.parse_args(["--config", str(tmp_path / "bad.yaml")]))


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("run", ["--model", str(DYNAMIC), "--source", str(FRAMES), "--size", "0x10"],
     "--size.0: Input should be greater than or equal to 1 (got 0)"),
    ("run", ["--model", str(DYNAMIC), "--source", str(FRAMES), "--mean", "a,b,c"],
     "--mean.0: Input should be a valid number"),
    ("calibrate", ["--model", str(DYNAMIC), "--data", str(FRAMES), "--out", "t.json", "--color", "rgba"],
     "--color: Input should be 'rgb', 'bgr' or 'gray' (got 'rgba')"),
    ("build", ["--model", str(DYNAMIC), "--out", "x", "--resize", "crop"], "--resize: Input should be 'letterbox'"),
    ("build", ["--model", str(DYNAMIC), "--out", "x", "--max-batch", "0"], "--max-batch 0: must be 1..256"),
    ("build", ["--model", str(DYNAMIC), "--out", "x", "--size", "100x100"],
     "preprocess.size 100x100 is not a multiple of the model's stride 32"),
    ("compare", ["--reference", str(DYNAMIC), "--candidate", str(DYNAMIC), "--data", str(FRAMES), "--size", "big"],
     "--size: expected WIDTHxHEIGHT such as 640x640"),
    ("bench", ["--model", str(DYNAMIC), "--suite", "throughput", "--std", "1,0,1"],
     "--std: Value error, std must not contain 0"),
    ("compare", ["--reference", str(DYNAMIC), "--candidate", str(DYNAMIC), "--data", str(FRAMES), "--scale", "0"],
     "--scale: Input should be greater than 0"),
    ("bench", ["--model", str(DYNAMIC), "--suite", "throughput", "--layout", "chw"],
     "--layout: Input should be 'nchw' or 'nhwc'"),
])
def test_a_bad_value_is_one_clear_error_with_exit_code_2(command, argv, message, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([command, *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in caplog.text
    assert list(tmp_path.iterdir()) == [], "nothing ran"


def test_build_of_a_dynamic_model_without_a_size_says_pass_size(tmp_path, caplog):
    model = onnx.load(str(DYNAMIC))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "imgsz"]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "nosize.onnx"))
    assert main(["build", "--model", str(tmp_path / "nosize.onnx"), "--out", str(tmp_path / "a")]) == 2
    assert "pass --size WIDTHxHEIGHT" in caplog.text and "Traceback" not in caplog.text
    assert main(["build", "--model", str(tmp_path / "nosize.onnx"), "--out", str(tmp_path / "a"),
                 "--size", "128x128"]) == 0


def test_build_then_run_at_the_built_size(artifacts, tmp_path, fed):
    assert read_manifest(artifacts / "160x160").preprocess.size == (160, 160)
    assert read_manifest(artifacts / "224x224").preprocess.size == (224, 224)
    seen = {}
    for size in ("160x160", "224x224"):
        fed.clear()
        assert main(["run", "--model", str(artifacts / size), "--source", str(FRAMES), "--max-frames", "2",
                     "--sink", f"jsonl:{tmp_path / size}.jsonl"]) == 0, "no --size: the artifact's"
        seen[size] = shapes(fed)
        assert len((tmp_path / f"{size}.jsonl").read_text().splitlines()) == 2
    assert seen == {"160x160": {(1, 3, 160, 160)}, "224x224": {(1, 3, 224, 224)}}


def test_run_flags_beat_the_artifact_record_and_the_config(artifacts, tmp_path, fed):
    assert main(["run", "--model", str(artifacts / "224x224"), "--source", str(FRAMES), "--max-frames", "1",
                 "--size", "192x192", "--sink", f"jsonl:{tmp_path / 'a.jsonl'}"]) == 0
    assert (1, 3, 192, 192) in shapes(fed) and (1, 3, 224, 224) in shapes(fed), "warmed at the record, fed 192"
    assert fed[-1].shape == (1, 3, 192, 192)
    config = tmp_path / "device.yaml"
    config.write_text(f"model: {{path: {DYNAMIC}}}\nsource: {{uri: {FRAMES}}}\npreprocess: {{size: [256, 256]}}\n")
    fed.clear()
    assert main(["run", "--config", str(config), "--max-frames", "1"]) == 0
    assert fed[-1].shape == (1, 3, 256, 256), "the config's size beats the model's imgsz"
    fed.clear()
    assert main(["run", "--config", str(config), "--max-frames", "1", "--size", "128x96"]) == 0
    assert fed[-1].shape == (1, 3, 96, 128), "the flag beats the config"


def test_calibrate_size_is_recorded_and_built_for(tmp_path, caplog):
    table = tmp_path / "t.json"
    assert main(["calibrate", "--model", str(DYNAMIC), "--data", str(FRAMES), "--samples", "2", "--method", "minmax",
                 "--size", "224x224", "--out", str(table), "--no-progress"]) == 0
    assert load_table(table).input_shapes == {"images": [1, 3, 224, 224]}
    assert main(["build", "--model", str(DYNAMIC), "--precision", "int8", "--calibration", str(table),
                 "--no-fidelity-gate", "--out", str(tmp_path / "int8")]) == 0
    record = read_manifest(tmp_path / "int8").preprocess
    assert (record.size, record.calibrated_size, record.size_source) == ((224, 224), (224, 224),
                                                                         "the calibration table")
    assert main(["build", "--model", str(DYNAMIC), "--precision", "int8", "--calibration", str(table),
                 "--no-fidelity-gate", "--size", "192x192", "--out", str(tmp_path / "int8-192")]) == 0
    record = read_manifest(tmp_path / "int8-192").preprocess
    assert (record.size, record.calibrated_size) == ((192, 192), (224, 224))
    assert "calibration table was measured at 224x224, the engine is built for 192x192" in caplog.text


def test_compare_feeds_both_models_what_the_flags_say(tmp_path, fed, capsys):
    base = ["compare", "--reference", str(DYNAMIC), "--candidate", str(DYNAMIC), "--data", str(FRAMES),
            "--samples", "1", "--json"]
    assert main(base) == 0
    letterbox = [t for t in fed if t.any()]
    fed.clear()
    assert main([*base, "--resize", "stretch"]) == 0
    stretch = [t for t in fed if t.any()]
    capsys.readouterr()
    assert shapes(letterbox) == shapes(stretch) == {(1, 3, 160, 160)}, "the metadata's size, for both models"
    assert len(letterbox) == len(stretch) == 2, "reference and candidate"
    assert np.array_equal(letterbox[0], letterbox[1]) and np.array_equal(stretch[0], stretch[1])
    assert not np.allclose(letterbox[0], stretch[0]), "--resize stretch changes what both are fed"
    fed.clear()
    assert main([*base, "--size", "224x224"]) == 0
    assert shapes([t for t in fed if t.any()]) == {(1, 3, 224, 224)}


def test_compare_uses_the_candidate_artifacts_size(artifacts, fed, capsys):
    assert main(["compare", "--reference", str(DYNAMIC), "--candidate", str(artifacts / "224x224"), "--data",
                 str(FRAMES), "--samples", "1", "--json", "--bench", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["report"]
    assert result["bench"]["candidate"]["fps"] > 0, "--bench feeds the built size too, not 1x1"
    assert shapes([t for t in fed if t.any()]) == {(1, 3, 224, 224)}
    assert all(o["max_abs_error"] == 0 for o in report["outputs"]), "an fp32 artifact gives the reference's outputs"


def test_bench_measures_at_the_given_size(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(DYNAMIC), "--source", str(FRAMES), "--suite", "throughput", "--frames", "2",
            "--rounds", "1", "--case-seconds", "1", "--threads", "1", "--output", str(out)]
    assert main([*argv, "--size", "224x224"]) == 0
    assert json.loads(out.read_text())["throughput"][0]["input_shape"] == [1, 3, 224, 224]
    assert main(argv) == 0
    assert json.loads(out.read_text())["throughput"][0]["input_shape"] == [1, 3, 160, 160]
    assert "input 1x3x160x160" in capsys.readouterr().out
