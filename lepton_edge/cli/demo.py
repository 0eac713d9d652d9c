"""`lepton-edge demo`: the whole system on this machine (broker, scheduler, device)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.tools.demo import run_demo

DESCRIPTION = (
    'Starts a local mosquitto, the scheduler (dashboard address printed) and a device running two live synthetic'
    ' cameras through one batched detector (batches of 2) with a colour classifier cascaded on its detections,'
    ' tracking on both, a counting line and a zone on the first with event clips (pre 2 s, post 2 s) in OUT/clips.'
    ' The scheduler pushes both workloads to the device as one desired config and stores its events; the console'
    ' shows the counts and each event, and the end of the run how many events, crossings and clips there were.'
    ' The scheduler runs with --insecure-local: its API and dashboard, on 127.0.0.1 only, take no token (for this'
    ' demo only).'
)

EPILOG = "examples:\n  lepton-edge demo --duration 30\n  lepton-edge demo --no-fleet --out /tmp/demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--out", default="out/demo", help="folder for the results, the annotated video, the clips, the "
                   "broker, the scheduler store and the device state (default out/demo under the current folder)")
    p.add_argument("--no-fleet", action="store_true", help="only the pipeline: no broker, agent or scheduler")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.duration, Path(args.out), fleet=not args.no_fleet)
