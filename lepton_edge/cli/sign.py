"""`lepton-edge sign`: signs a model artifact and prints its model.artifact config snippet."""

from __future__ import annotations

import argparse

from lepton_edge.device.signing import add_sign_arguments, cmd_sign


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sign_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cmd_sign(args)
