"""`lepton-edge sign`: signs a model artifact's metadata and prints its model.artifact config snippet."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from lepton_edge.core.errors import UpdateError
from lepton_edge.device.signing import DEFAULT_EXPIRES_S, sign_file

MAX_EXPIRES_IN_S = 10 * 365 * 24 * 3600

DESCRIPTION = "Sign a model artifact (TUF-style metadata) and print the model.artifact snippet."
EPILOG = """examples:
  lepton-edge sign model.onnx --key release.key --version 7 --target cameras-east \\
      --url https://updates.example.com/model.onnx
  lepton-edge sign shapes-int8.tar --key release.key --format json --version 8 --target yolo11n \\
      --url https://updates.example.com/shapes-int8.tar --expires-in 2592000

The signature covers the version, the target, the URL path, the size, the sha256 and the expiry. A device
refuses versions below the highest it has accepted for the target: to go back to an older artifact,
sign it again with a higher --version. The file is a single model (.onnx, .plan) or a .tar of an artifact
directory (tar -cf shapes-int8.tar -C out/artifacts shapes-int8); upload it to the URL unchanged.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="model file (.onnx, .plan) or .tar of an artifact directory")
    parser.add_argument("--key", required=True, type=Path, help="ed25519 private key (PEM) from lepton-edge keygen")
    parser.add_argument(
        "--url",
        required=True,
        help="where devices will download it (https://, http:// or file:///); its path is signed",
    )
    parser.add_argument(
        "--version", required=True, type=int, help="release number for the target, higher than the last one"
    )
    parser.add_argument(
        "--target", required=True, help="the device group or model name the artifact is for (agent.artifact_targets)"
    )
    parser.add_argument(
        "--expires-in",
        type=int,
        default=DEFAULT_EXPIRES_S,
        help=f"seconds the signed reference stays valid (default {DEFAULT_EXPIRES_S}: one year)",
    )
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml", help="snippet format (default yaml)")


def run(args: argparse.Namespace) -> int:
    """Sign ``args.file`` and print the ``model.artifact`` snippet of the desired config."""
    if not 0 < args.expires_in <= MAX_EXPIRES_IN_S:
        raise UpdateError(f"--expires-in {args.expires_in}: must be 1..{MAX_EXPIRES_IN_S} seconds (10 years)")
    expires = int(time.time()) + args.expires_in
    ref = sign_file(args.file, args.key, url=args.url, version=args.version, target=args.target, expires=expires)
    snippet = {"model": {"artifact": ref.model_dump(exclude_none=True)}}
    if args.format == "json":
        print(json.dumps(snippet, indent=2))
    else:
        print(yaml.safe_dump(snippet, sort_keys=False), end="")
    return 0
