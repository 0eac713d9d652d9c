"""`lepton-edge inspect`: an artifact (and whether it matches this machine) or an ONNX model."""

from __future__ import annotations

import argparse

from lepton_edge.engines.engine_cache import add_inspect_arguments, cli_inspect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inspect_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cli_inspect(args)
