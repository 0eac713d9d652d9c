"""`lepton-edge bench`: raw backend vs naive loop vs pipeline, side by side (and the agent and scheduler suites)."""

from __future__ import annotations

import argparse

from lepton_edge.tools.bench import add_bench_arguments, run_bench_command

DESCRIPTION = 'Benchmarks print ratios measured in one run (absolute times on a shared machine are noise).'

EPILOG = """examples:
  lepton-edge bench                                   # demo detector and a YOLOv8n-sized model
  lepton-edge bench --model det.onnx --source video.mp4 --frames 300
  lepton-edge bench --latency --duration 60           # live 30 fps latency stability run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bench_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_bench_command(args)
