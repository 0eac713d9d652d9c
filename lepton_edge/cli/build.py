"""`lepton-edge build`: an engine artifact (engine + manifest.json) from an ONNX model."""

from __future__ import annotations

import argparse

from lepton_edge.engines.engine_cache import add_build_arguments, cli_build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_build_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cli_build(args)
