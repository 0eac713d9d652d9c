"""`--constant`, `--state`, `--recorded`, `--state-reset` on build, compare and calibrate; inspect on the VAD."""

import argparse
import json
from pathlib import Path

import pytest

from lepton_edge.cli import main
from lepton_edge.cli.inputs_args import add_input_arguments, inputs_from_args
from lepton_edge.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
VAD = ROOT / "models" / "silero_vad.onnx"
AUDIO = ROOT / "models" / "silero_vad_audio.npz"
VAD_FLAGS = ["--constant", "sr=16000", "--state", "stateN=state"]


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_input_arguments(parser)
    return inputs_from_args(parser.parse_args(argv))


def test_flags_make_an_inputs_config_over_the_config_file(tmp_path):
    assert parse([]) is None
    config = parse([*VAD_FLAGS, "--constant", "scale=[0.5, 2]", "--recorded", "input=audio",
                    "--state-reset", "never"])
    assert config.constants == {"sr": 16000, "scale": [0.5, 2]} and config.recorded == {"input": "audio"}
    assert config.state[0].output == "stateN" and config.state[0].input == "state"
    assert config.state_reset == "never"
    device = tmp_path / "device.yaml"
    device.write_text("model: {path: m.onnx, inputs: {constants: {sr: 8000}, state_reset: every_frame}}\n")
    merged = parse(["--config", str(device), "--constant", "sr=16000"])
    assert merged.constants == {"sr": 16000} and merged.state_reset == "every_frame"


@pytest.mark.parametrize(("argv", "message"), [
    (["--constant", "sr"], "expected NAME=VALUE"),
    (["--constant", "sr=[1,"], "not a number or a list"),
    (["--constant", "sr=yes"], "got bool"),
    (["--constant", "sr=.inf"], "finite"),
    (["--state", "stateN=state", "--constant", "state=1"], "given twice"),
])
def test_bad_flags_are_refused_with_the_reason(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_inspect_says_what_the_vad_needs(capsys):
    assert main(["inspect", str(VAD)]) == 0
    out = capsys.readouterr().out
    assert "input:       state [2, 'batch', 128] float32  needs: state (fed back from output stateN" in out
    assert "input:       sr [] int64  needs: constant" in out
    assert main(["inspect", str(VAD), "--json"]) == 0
    needs = {d["name"]: d["needs"] for d in json.loads(capsys.readouterr().out)["input_needs"]}
    assert needs["input"].startswith("recorded")


def test_build_and_compare_the_vad_from_the_command_line(tmp_path, capsys):
    assert main(["build", "--model", str(VAD), *VAD_FLAGS, "--out", str(tmp_path / "fp32")]) == 0
    capsys.readouterr()
    assert main(["compare", "--reference", str(VAD), "--candidate", str(tmp_path / "fp32"), "--data", str(AUDIO),
                 *VAD_FLAGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["samples"] == 125 and report["fidelity"]["value"] == 1.0
    assert main(["compare", "--reference", str(VAD), "--candidate", str(tmp_path / "fp32"), "--data", str(AUDIO),
                 *VAD_FLAGS, "--bench", "--rounds", "1", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)["bench"]
    assert bench["reference"]["fps"] > 0 and bench["candidate"]["fps"] > 0, "benchmarked on the recording's sizes"
    assert main(["calibrate", "--model", str(VAD), "--data", str(AUDIO), *VAD_FLAGS, "--samples", "8",
                 "--method", "minmax", "--out", str(tmp_path / "table.json"), "--no-progress"]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["samples"] == 8 and table["ranges"]["state"][1] > table["ranges"]["state"][0]


def test_build_without_the_flags_says_what_the_vad_needs(tmp_path, capsys):
    code = main(["build", "--model", str(VAD), "--precision", "int8", "--calibration-data", str(AUDIO),
                 "--out", str(tmp_path / "int8")])
    assert code != 0
    err = capsys.readouterr().err
    assert "'state' looks like state fed back from output 'stateN'" in err and "--state stateN=state" in err


def test_run_feeds_the_vad_its_constant_and_state_from_the_flags(tmp_path):
    out = tmp_path / "vad.jsonl"
    assert main(["run", "--model", str(VAD), "--source", str(AUDIO), *VAD_FLAGS, "--sink", f"jsonl:{out}"]) == 0
    probabilities = [json.loads(line)["outputs"]["output"]["values"][0][0] for line in out.read_text().splitlines()]
    assert len(probabilities) == 125
    assert max(probabilities[62:109]) > 0.9 > max(probabilities[:31])  # the vowel, not the near-silence
    assert main(["run", "--model", str(VAD), "--source", str(AUDIO), "--sink", f"jsonl:{tmp_path / 'no.jsonl'}"]) != 0
