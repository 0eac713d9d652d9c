"""`lepton-edge sign`: signs a model artifact and prints its model.artifact config snippet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.signing import sign_file

DESCRIPTION = "Sign a model artifact and print the model.artifact snippet of the desired config."
EPILOG = """examples:
  lepton-edge sign model.onnx --key release.key --url https://updates.example.com/model.onnx
  lepton-edge sign shapes-int8.tar --key release.key --format json \\
      --url https://updates.example.com/shapes-int8.tar

The file is a single model (.onnx, .plan) or a .tar of an artifact directory
(tar -cf shapes-int8.tar -C out/artifacts shapes-int8). The printed snippet goes into the
model section of the desired config; upload the file to the URL unchanged.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="model file (.onnx, .plan) or .tar of an artifact directory")
    parser.add_argument(
        "--key", required=True, type=Path, help="ed25519 private key (PEM) from lepton-edge keygen"
    )
    parser.add_argument("--url", help="where devices will download the file (https://, http:// or file:///)")
    parser.add_argument(
        "--format", choices=["yaml", "json"], default="yaml", help="snippet format (default yaml)"
    )


def run(args: argparse.Namespace) -> int:
    """Sign ``args.file`` and print the ``model.artifact`` snippet of the desired config."""
    if args.url is not None:
        try:
            ArtifactRef(url=args.url, size=1, sha256="0" * 64)
        except ValidationError as e:
            raise UpdateError(f"--url {args.url!r}: {e.errors()[0]['msg']}") from None
    ref = sign_file(args.file, args.key)
    ref["url"] = args.url
    snippet = {"model": {"artifact": ref}}
    if args.format == "json":
        print(json.dumps(snippet, indent=2))
    else:
        print(yaml.safe_dump(snippet, sort_keys=False), end="")
    if args.url is None:
        print("note: url is empty; give --url or fill it in before publishing the config", file=sys.stderr)
    return 0
