"""`lepton-edge scheduler`: one fleet scheduler replica, and `lepton-edge scheduler token` to manage API tokens."""

from __future__ import annotations

import argparse
import getpass
import time

from lepton_edge.config.scheduler import load_scheduler_config, parse_scheduler_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.auth import ROLES, TokenManager
from lepton_edge.scheduler.service import run_scheduler
from lepton_edge.scheduler.stores import open_store

DESCRIPTION = (
    "Ingests births, deaths, telemetry and reported configs over MQTT, places workloads on devices, "
    "pushes desired configs, serves the HTTP API and dashboard. Every API request needs a token "
    "(`scheduler token create`), unless --insecure-local."
)

EPILOG = """examples:
  lepton-edge scheduler --config deploy/scheduler.example.yaml
  lepton-edge scheduler token create --config scheduler.yaml --name ops-alice --role admin
  lepton-edge scheduler token create --config scheduler.yaml --name wall-screen --role viewer
  lepton-edge scheduler token list --config scheduler.yaml
  lepton-edge scheduler token revoke --config scheduler.yaml 3f9a1c2b7d4e
  lepton-edge scheduler --config scheduler.yaml --insecure-local   # demo on this machine: no tokens (loud)

roles: viewer (read), operator (also workloads, device groups, commands, rollouts), admin (also tokens,
settings, the audit log). A token is printed once, at creation; only its SHA-256 is stored."""


def _config_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--config", "-c", required=required, help="scheduler config YAML (see deploy/scheduler.example.yaml)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser, required=False)
    parser.add_argument(
        "--insecure-local",
        action="store_true",
        help="serve the API without authentication (every caller is the admin 'insecure-local', still audited); "
        "only on a loopback api.host; for demos",
    )
    sub = parser.add_subparsers(dest="scheduler_command", metavar="token")
    token = sub.add_parser(
        "token",
        help="create, list or revoke API tokens in the config's store",
        description="API tokens of the scheduler's store; each change is audited as cli:<your user name>.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token and print it (once)")
    _config_argument(create, required=True)
    create.add_argument("--name", required=True, help="what the token is for, e.g. ci-deploy (shown in the audit log)")
    create.add_argument("--role", required=True, choices=ROLES, help="viewer, operator or admin")
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    _config_argument(listing, required=True)
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    _config_argument(revoke, required=True)
    revoke.add_argument("token_id", help="the token's 12-hex-digit id (from `token list`)")


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        raise ConfigError("lepton-edge scheduler: --config is required (see deploy/scheduler.example.yaml)")
    config = load_scheduler_config(args.config)
    if getattr(args, "scheduler_command", None) == "token":
        return _token(args, config.store_url)
    if args.insecure_local:
        api = config.api.model_dump()
        config = parse_scheduler_config(
            {**config.model_dump(), "api": {**api, "insecure_local": True}}, f"{args.config} with --insecure-local"
        )
    return run_scheduler(config)


def _token(args: argparse.Namespace, store_url: str) -> int:
    with open_store(store_url) as store:
        tokens = TokenManager(store, f"cli:{getpass.getuser()}")
        if args.token_command == "create":
            try:
                token, text = tokens.create(args.name, args.role)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            print(f"created API token {token.token_id} ({token.name}, {token.role}); it is shown only now:")
            print(text)
            return 0
        if args.token_command == "revoke":
            if not tokens.revoke(args.token_id):
                raise ConfigError(f"no active API token {args.token_id!r}; `token list` shows them")
            print(f"revoked API token {args.token_id}")
            return 0
        print(f"{'id':<13} {'name':<24} {'role':<9} {'created':<20} {'by':<20} revoked")
        for t in tokens.list():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at))
            revoked = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.revoked_at)) if t.revoked_at else "-"
            print(f"{t.token_id:<13} {t.name:<24} {t.role:<9} {created:<20} {t.created_by:<20} {revoked}")
        return 0
