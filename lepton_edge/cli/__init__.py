"""The ``lepton-edge`` command line: a thin layer over the library API.

Each command is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int`` (and optionally
``DESCRIPTION`` and ``EPILOG``). :data:`COMMANDS` names them; a command's module is imported only when that command
runs, so ``lepton-edge --help`` and ``lepton-edge run`` import nothing they do not use.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

from lepton_edge import __version__
from lepton_edge.core.errors import LeptonError
from lepton_edge.core.logs import setup_logging

log = logging.getLogger("lepton_edge.cli")

COMMANDS: dict[str, str] = {
    "run": "run the inference pipeline",
    "bench": "measure raw backend vs naive loop vs pipeline, side by side",
    "calibrate": "measure INT8 activation ranges: calibration table, TensorRT cache, QDQ model",
    "build": "build an engine artifact (engine + manifest.json) from an ONNX model",
    "inspect": "show an artifact (and whether it matches this machine) or an ONNX model",
    "compare": "fidelity (and accuracy, --bench speed) of a candidate engine vs its fp32 reference",
    "scheduler": "run a fleet scheduler replica (ingestion, placement, failover, API)",
    "simulate": "simulate a fleet of devices speaking the real protocol",
    "demo": "the whole system on this machine: broker, scheduler, device",
    "doctor": "check this machine, the config, its model and the broker",
    "keygen": "create an ed25519 key pair that signs model artifacts",
    "sign": "sign a model artifact and print its model.artifact config snippet",
}
"""Command name -> one-line help; the command lives in ``lepton_edge.cli.<name>``."""


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"lepton_edge.cli.{name}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (and its arguments added), the others are listed."""
    parser = argparse.ArgumentParser(
        prog="lepton-edge",
        description="Low-latency edge inference: run pipelines, build engines, manage a fleet.",
    )
    parser.add_argument("--version", action="version", version=f"lepton-edge {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        module = command_module(name)
        cmd = sub.add_parser(name, help=summary, description=getattr(module, "DESCRIPTION", summary),
                             epilog=getattr(module, "EPILOG", None),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.run)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    """The first argument that names a command (options before it take no values but --log-level's)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    # OpenCV/FFmpeg print a line per failed reconnect attempt; our reader reports those itself.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except LeptonError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
