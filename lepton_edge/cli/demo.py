"""`lepton-edge demo`: the whole system on this machine (broker, scheduler, device)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.tools.demo import run_demo

DESCRIPTION = (
    'Starts a local mosquitto, the scheduler (dashboard address printed) and a device running the bundled'
    ' detector on a live synthetic camera, with telemetry and remote configuration between them. The scheduler'
    ' runs with --insecure-local: its API and dashboard, on 127.0.0.1 only, take no token (for this demo only).'
)

EPILOG = "examples:\n  lepton-edge demo --duration 30\n  lepton-edge demo --no-fleet --out /tmp/demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--out", default="out/demo", help="folder for the results, the annotated video, the broker, the "
                   "scheduler store and the device state (default out/demo under the current folder)")
    p.add_argument("--no-fleet", action="store_true", help="only the pipeline: no broker, agent or scheduler")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.duration, Path(args.out), fleet=not args.no_fleet)
