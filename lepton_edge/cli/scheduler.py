"""`lepton-edge scheduler`: one fleet scheduler replica."""

from __future__ import annotations

import argparse

from lepton_edge.config.scheduler import load_scheduler_config
from lepton_edge.scheduler.service import run_scheduler

DESCRIPTION = (
    "Ingests births, deaths, telemetry and reported configs over MQTT, places workloads on devices, "
    "pushes desired configs, serves the HTTP API and dashboard."
)

EPILOG = "examples:\n  lepton-edge scheduler --config deploy/scheduler.example.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", required=True, help="scheduler config YAML (see deploy/scheduler.example.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    return run_scheduler(load_scheduler_config(args.config))
