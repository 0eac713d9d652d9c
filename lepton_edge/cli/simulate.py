"""`lepton-edge simulate`: a fleet of simulated devices speaking the real protocol."""

from __future__ import annotations

import argparse

from lepton_edge.scheduler.simulator import add_simulate_arguments, run_simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_simulate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_simulator(args)
