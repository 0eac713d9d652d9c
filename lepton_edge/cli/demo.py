"""`lepton-edge demo`: the whole system on this machine (broker, scheduler, device)."""

from __future__ import annotations

import argparse

from lepton_edge.tools.demo import add_demo_arguments, cmd_demo

DESCRIPTION = (
    'Starts a local mosquitto, the scheduler (dashboard address printed) and a device running the bundled'
    ' detector on a live synthetic camera, with telemetry and remote configuration between them.'
)

EPILOG = "examples:\n  lepton-edge demo --duration 30\n  lepton-edge demo --no-fleet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_demo_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cmd_demo(args)
