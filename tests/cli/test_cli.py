import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lepton_edge.cli import main
from tests.support.onnx_models import mean_color_classifier


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return mean_color_classifier(tmp_path_factory.mktemp("cli") / "m.onnx")


def test_run_from_flags_writes_every_result(tmp_path, model):
    out = tmp_path / "r.jsonl"
    code = main(["run", "--model", str(model), "--source", "synthetic://shapes?fps=0&width=64&height=48&frames=25",
                 "--sink", f"jsonl:{out}"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(25))
    assert {"latency_ms", "age_ms", "stage_ms", "classes", "source", "time"} <= rows[0].keys()


def test_run_from_config_file_with_overrides(tmp_path, model):
    cfg = tmp_path / "device.yaml"
    cfg.write_text(f"model: {{path: {model}}}\nsource: {{uri: 'synthetic://shapes?fps=0&frames=5'}}\n"
                   "sinks: [{type: jsonl, path: out/a.jsonl}]\n")
    assert main(["run", "--config", str(cfg)]) == 0
    assert len((tmp_path / "out" / "a.jsonl").read_text().splitlines()) == 5  # relative to the config file
    assert main(["run", "--config", str(cfg), "--max-frames", "3", "--sink", f"jsonl:{tmp_path / 'b.jsonl'}"]) == 0
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--model", "missing.onnx", "--source", "synthetic://shapes"], 3, "model file not found"),
        (["--model", "{model}", "--source", "nosuch://x"], 4, "nosuch://x"),
        (["--model", "{model}", "--source", "synthetic://shapes", "--sink", "kafka:x"], 2, "--sink"),
        (["--source", "synthetic://shapes"], 2, "--model"),
        (["--config", "missing.yaml"], 2, "config file not found"),
    ],
)
def test_bad_input_gives_one_clear_message_and_exit_code(argv, code, message, model, caplog):
    argv = [a.replace("{model}", str(model)) for a in argv]
    assert main(["run", *argv]) == code
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]


def test_corrupt_model_is_a_model_error(tmp_path, caplog):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf" * 10)
    assert main(["run", "--model", str(bad), "--source", "synthetic://shapes"]) == 3
    assert "cannot load this model" in caplog.text


@pytest.mark.parametrize("command", ["run", "bench"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out


@pytest.mark.integration
def test_sigterm_stops_gracefully_and_flushes_and_talks_to_systemd(tmp_path, model):
    out = tmp_path / "r.jsonl"
    exe = Path(sys.executable).parent / "lepton-edge"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = subprocess.Popen(
        [str(exe), "run", "--model", str(model), "--source", "synthetic://shapes?fps=50&width=64&height=48",
         "--sink", f"jsonl:{out}"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 40):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "SIGTERM received: stopping" in err
    results = int(err.split("results=")[1].split()[0])
    assert len(out.read_text().splitlines()) == results >= 40
    notify.settimeout(1)
    messages = []
    with contextlib.suppress(TimeoutError):
        while True:
            messages.append(notify.recv(4096).decode())
    notify.close()
    assert messages[0].startswith("READY=1") and messages[-1] == "STOPPING=1"
