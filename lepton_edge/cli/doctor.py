"""`lepton-edge doctor`: checks this machine, the config, its model and the broker."""

from __future__ import annotations

import argparse

from lepton_edge.device.doctor import add_arguments as add_doctor_arguments
from lepton_edge.device.doctor import main_doctor

DESCRIPTION = (
    'Checks Python, onnxruntime, TensorRT/CUDA, OpenCV (GStreamer/FFmpeg), cameras, Jetson, the config '
    'and model, broker reachability, disk space and the clock. Exits 1 if any check fails; warnings do '
    'not.'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_doctor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_doctor(args)
