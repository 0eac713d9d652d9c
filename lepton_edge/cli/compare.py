"""`lepton-edge compare`: accuracy (and speed) of a candidate engine against its fp32 reference."""

from __future__ import annotations

import argparse

from lepton_edge.engines.evaluation.compare import add_compare_arguments, cli_compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_compare_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cli_compare(args)
