"""`lepton-edge doctor`: checks this machine, the config, its model and the broker."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.device.doctor import format_report, run_checks

DESCRIPTION = (
    'Checks Python, onnxruntime, TensorRT/CUDA, OpenCV (GStreamer/FFmpeg), cameras, Jetson, the config '
    'and model, broker reachability, disk space and the clock. Exits 1 if any check fails; warnings do '
    'not.'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="device config to validate, with its model and broker")
    parser.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker to reach (default: the config's "
                        "agent.mqtt host and port)")


def run(args: argparse.Namespace) -> int:
    """Print the report; 1 if any check failed, else 0 (warnings do not fail)."""
    checks = run_checks(getattr(args, "config", None), getattr(args, "broker", None))
    print(format_report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
