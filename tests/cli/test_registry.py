"""The lazy command registry: ``--help`` imports no command, every command has its own help, typos are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lepton_edge.cli import COMMANDS, command_module, main

HEAVY = ("numpy", "onnx", "onnxruntime", "cv2", "pydantic", "paho", "fastapi")


def imported_by(argv: list[str]) -> tuple[int, str, set[str]]:
    """Run ``lepton-edge ARGV`` in a fresh interpreter: exit code, stdout and the modules it had imported."""
    code = f"""
import contextlib, io, json, sys
from lepton_edge.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        rc = main({argv!r})
    except SystemExit as e:
        rc = e.code
print(json.dumps([rc, out.getvalue(), sorted(sys.modules)]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rc, out, modules = json.loads(done.stdout.splitlines()[-1])
    return rc, out, set(modules)


def test_top_level_help_lists_every_command_and_imports_none_of_them_nor_numpy():
    rc, out, modules = imported_by(["--help"])
    assert rc == 0
    assert all(name in out for name in COMMANDS)
    assert not {f"lepton_edge.cli.{name}" for name in COMMANDS} & modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m.startswith(("lepton_edge.tools", "lepton_edge.device", "lepton_edge.runtime"))}


def test_a_command_imports_only_its_own_module():
    rc, _, modules = imported_by(["keygen", "--help"])
    assert rc == 0
    assert {m for m in modules if m.startswith("lepton_edge.cli.")} == {"lepton_edge.cli.keygen"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_registered_command_has_help_and_a_run_function(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lepton-edge {command}")
    assert callable(command_module(command).run)


def test_an_unknown_command_is_argparses_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument COMMAND: invalid choice: 'frobnicate'" in err
    assert "usage: lepton-edge" in err
