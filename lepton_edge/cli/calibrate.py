"""`lepton-edge calibrate`: INT8 activation ranges, TensorRT cache and QDQ model."""

from __future__ import annotations

import argparse

from lepton_edge.engines.calibration import add_calibrate_arguments, cmd_calibrate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_calibrate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cmd_calibrate(args)
