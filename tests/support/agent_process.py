"""Runs the device agent in a process of its own, for tests that kill it.

``python -m tests.support.agent_process CONFIG.json``: the JSON file holds a device config mapping (with
an ``agent`` section); the process runs :func:`lepton_edge.device.agent.run_device` until SIGTERM and
exits with its exit code. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def start(config: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    """Write ``config`` to ``path`` and start the agent process on it (its log beside it, ``.log``)."""
    path.write_text(json.dumps(config))
    log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the child process
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.agent_process", str(path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def main(argv: list[str]) -> int:
    from lepton_edge.config.device import parse_config
    from lepton_edge.device.agent import run_device

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = parse_config(json.loads(Path(argv[0]).read_text()), argv[0])
    return run_device(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
