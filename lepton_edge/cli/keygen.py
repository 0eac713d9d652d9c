"""`lepton-edge keygen`: an ed25519 key pair that signs model artifacts."""

from __future__ import annotations

import argparse

from lepton_edge.device.signing import add_keygen_arguments, cmd_keygen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_keygen_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return cmd_keygen(args)
