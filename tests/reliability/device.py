"""The device under test: the real ``lepton-edge`` command line in a process of its own, plus a ledger.

``python -m tests.reliability.device --ledger LEDGER [--stuck-file FILE] -- run --config device.yaml``

- **Ledger**: every :meth:`Outbox.put <lepton_edge.fleet.outbox.Outbox.put>` that returns appends one JSON line
  to LEDGER (``put`` with the message's ``lepton-msg-id``, topic and priority; ``dropped_new`` when the
  outbox refused a low-priority message; ``put_failed`` with the error). Lines are written with one
  ``O_APPEND`` write after the put committed, so a SIGKILL can lose at most the line of the put in
  progress (that message then shows up as delivered-but-unledgered, never as lost).
- **Stuck stage** (``--stuck-file``): while FILE exists, every inference blocks inside the backend, the
  way a hung driver call would: the stage thread stays alive and makes no progress, and raises nothing.

Everything else is the unmodified CLI (``lepton_edge.cli.main``), signal handling included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STUCK_POLL_S = 0.05


def _append(fd: int, record: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


def install_ledger(path: Path) -> None:
    """Record every outbox put (see the module docstring) in ``path``."""
    import inspect

    from lepton_edge.fleet.outbox import Outbox

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    original = Outbox.put
    signature = inspect.signature(original)

    def put(self: Outbox, *args: Any, **kwargs: Any) -> int | None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        topic, priority = bound.arguments["topic"], bound.arguments["priority"]
        try:
            message_id = original(self, *args, **kwargs)
        except Exception as e:
            _append(
                fd,
                {
                    "event": "put_failed",
                    "topic": topic,
                    "priority": priority,
                    "error": str(e)[:300],
                    "t": time.time(),
                },
            )
            raise
        if message_id is None:
            _append(fd, {"event": "dropped_new", "topic": topic, "priority": priority, "t": time.time()})
        else:
            _append(
                fd,
                {
                    "event": "put",
                    "uid": self.uid(message_id),
                    "topic": topic,
                    "priority": priority,
                    "t": time.time(),
                },
            )
        return message_id

    Outbox.put = put  # type: ignore[method-assign]


def install_stuck_backend(trigger: Path) -> None:
    """Make every inference block while ``trigger`` exists (a hung stage, not a failing one)."""
    from lepton_edge.runtime.backends.base import Backend

    original = Backend.infer

    def infer(self: Backend, feeds: Any) -> Any:
        while trigger.exists():
            time.sleep(STUCK_POLL_S)
        return original(self, feeds)

    Backend.infer = infer  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.device")
    parser.add_argument("--ledger", type=Path, required=True, help="JSON-lines file of outbox puts")
    parser.add_argument("--stuck-file", type=Path, help="inference blocks while this file exists")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the lepton-edge arguments")
    args = parser.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    install_ledger(args.ledger)
    if args.stuck_file is not None:
        install_stuck_backend(args.stuck_file)
    from lepton_edge.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
