"""The device under test: the real ``lepton-edge`` command line in a process of its own, plus a ledger.

``python -m tests.reliability.device --ledger LEDGER [--stuck-file FILE] -- run --config device.yaml``

- **Ledger**: every :meth:`Outbox.put <lepton_edge.fleet.outbox.Outbox.put>` that returns appends one JSON line
  to LEDGER (``put`` with the message's ``lepton-msg-id``, topic and priority; ``dropped_new`` when the
  outbox refused a low-priority message; ``put_failed`` with the error). Lines are written with one
  ``O_APPEND`` write after the put committed, so a SIGKILL can lose at most the line of the put in
  progress (that message then shows up as delivered-but-unledgered, never as lost).
- **Events** in the ledger: a put on the events topic also records the event's ``kind`` and its own ``id`` (the
  analytics event id a receiver deduplicates by).
- **Sink figures** (``--sink-stats FILE``): every :data:`SINK_STATS_PERIOD_S` and at exit, the counters of the
  process's analytics event sinks (``queued``, ``lost``) and clip sinks (recorder and store figures) replace FILE
  (JSON), so a test reads what the device itself counted.
- **Stuck stage** (``--stuck-file``): while FILE exists, every inference blocks inside the backend, the
  way a hung driver call would: the stage thread stays alive and makes no progress, and raises nothing.

Everything else is the unmodified CLI (``lepton_edge.cli.main``), signal handling included.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

STUCK_POLL_S = 0.05
SINK_STATS_PERIOD_S = 0.25


def _event_fields(topic: str, payload: Any) -> dict[str, Any]:
    """``kind`` and ``id`` of an event payload (events topic only); empty for anything else."""
    if not str(topic).endswith("/events"):
        return {}
    try:
        event = json.loads(bytes(payload))
        return {"kind": event.get("kind"), "event_id": event.get("id")}
    except (TypeError, ValueError, AttributeError):
        return {}


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
        extra = _event_fields(topic, bound.arguments.get("payload", b""))
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
                    **extra,
                },
            )
        return message_id

    Outbox.put = put  # type: ignore[method-assign]


def install_sink_stats(path: Path) -> None:
    """Write the counters of every analytics event sink and clip sink of the process to ``path`` (JSON, replaced
    atomically) every :data:`SINK_STATS_PERIOD_S` and at exit."""
    from lepton_edge.device.results import AnalyticsEventSink
    from lepton_edge.runtime.clips.sink import ClipSink

    sinks: dict[str, weakref.WeakSet[Any]] = {"events": weakref.WeakSet(), "clips": weakref.WeakSet()}
    for key, cls in (("events", AnalyticsEventSink), ("clips", ClipSink)):
        original = cls.__init__

        def init(self: Any, *args: Any, _original: Any = original, _key: str = key, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            sinks[_key].add(self)

        cls.__init__ = init  # type: ignore[method-assign]

    def write() -> None:
        figures: dict[str, Any] = {"t": time.time()}
        for key, found in sinks.items():
            figures[key] = [sink.stats() for sink in list(found)]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(figures, default=str))
        os.replace(temporary, path)

    def loop() -> None:
        while True:
            time.sleep(SINK_STATS_PERIOD_S)
            try:
                write()
            except Exception:  # a sink closing under us: the next round writes
                continue

    threading.Thread(target=loop, name="reliability-sink-stats", daemon=True).start()
    atexit.register(write)


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
    parser.add_argument("--sink-stats", type=Path, help="JSON file of the event and clip sinks' counters")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the lepton-edge arguments")
    args = parser.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    install_ledger(args.ledger)
    if args.stuck_file is not None:
        install_stuck_backend(args.stuck_file)
    if args.sink_stats is not None:
        install_sink_stats(args.sink_stats)
    from lepton_edge.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
