"""`lepton-edge keygen`: an ed25519 key pair that signs model artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.device.signing import generate_keypair, key_id, load_public_key

DESCRIPTION = "Create an ed25519 key pair that signs model artifacts (lepton-edge sign)."
EPILOG = """examples:
  lepton-edge keygen --out /etc/lepton-edge/keys/release
      writes release.key (private, mode 0600: keep it on the release host) and release.pub
      (copy it to each device and list its path in agent.artifact_public_keys)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="path prefix of the key pair: writes PREFIX.key and PREFIX.pub",
    )


def run(args: argparse.Namespace) -> int:
    """Create a release key pair at ``args.out`` (.key and .pub)."""
    prefix = Path(args.out)
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    generate_keypair(private_path, public_path)
    print(
        f"wrote {private_path} (private, keep it secret) and {public_path} "
        f"(key id {key_id(load_public_key(public_path))}; list it in agent.artifact_public_keys)"
    )
    return 0
