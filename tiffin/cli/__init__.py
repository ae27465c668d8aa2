"""The `tiffin` command: `up` runs everything locally in the foreground; `check` validates deployment files;
`keys` makes, lists and revokes API keys; `status` shows a running tiffin's deployments; `render` writes a
deployment's Kubernetes manifests."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tiffin.apps.loading import endpoints_of, load_apps
from tiffin.cli import keys as apikeys_cli
from tiffin.cli import render as render_cli
from tiffin.cli.status import show_status
from tiffin.contracts.config import load_deployments
from tiffin.contracts.exceptions import ConfigError, ModelError, RedisServerError, TLSError
from tiffin.local.machine import machine_problems
from tiffin.local.up import say, up


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiffin", description="Serverless OpenAI-compatible endpoints for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run tiffin on this machine in the foreground (Ctrl-C stops it)")
    up.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="deployment YAML files or folders")
    up.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TIFFIN_STATE_DIR", ".state")),
                    help="Redis data and logs (default: ./.state or TIFFIN_STATE_DIR)")  # fmt: skip
    up.add_argument("--cache-dir", type=Path, default=None, help="converted models (default: ~/.cache/tiffin/models)")
    up.add_argument("--host", default="127.0.0.1", help="public listener address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="public listener port (default 8080)")
    up.add_argument("--admin-port", type=int, default=9090, help="admin port: /healthz, /readyz, /metrics, /api/status")
    up.add_argument("--admin-host", default="127.0.0.1",
                    help="admin listener address (default 127.0.0.1); any other address requires a token, which "
                         "tiffin up keeps in STATE_DIR/admin-token")  # fmt: skip
    up.add_argument("--tls-cert", action="append", type=Path, default=[], metavar="FILE",
                    help="PEM certificate chain (leaf first) for the public listener; repeat with --tls-key for "
                         "several hosts, chosen by SNI (default: a local CA in STATE_DIR/tls/)")  # fmt: skip
    up.add_argument("--tls-key", action="append", type=Path, default=[], metavar="FILE",
                    help="the private key of the --tls-cert in the same position")  # fmt: skip
    up.add_argument("--no-runner-pool", action="store_true",
                    help="start each runner as a fresh process instead of forking it from a process that imported "
                         "vLLM once (also TIFFIN_RUNNER_POOL=0)")  # fmt: skip
    up.add_argument("--plain-http", action="store_true",
                    help="serve plain HTTP (unencrypted): only behind a TLS-terminating proxy")  # fmt: skip
    status = sub.add_parser("status", help="show each deployment's state, replicas and queue (from a running tiffin)")
    status.add_argument(
        "--admin",
        default=os.environ.get("TIFFIN_ADMIN_URL", "http://127.0.0.1:9090"),
        help="the interceptor's admin address (default http://127.0.0.1:9090 or TIFFIN_ADMIN_URL)",
    )
    status.add_argument(
        "--json", action="store_true", help="print the JSON of GET /api/dashboard (what the dashboard page shows)"
    )
    status.add_argument("--token-file", type=Path, default=os.environ.get("TIFFIN_ADMIN_TOKEN_FILE"),
                        help="file holding the admin token, for an admin listener beyond loopback "
                             "(default TIFFIN_ADMIN_TOKEN_FILE)")  # fmt: skip
    check = sub.add_parser("check", help="validate deployment files and exit")
    check.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    apikeys_cli.add_parser(sub)
    render_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "status":
        raise SystemExit(show_status(args.admin, as_json=args.json, token_file=args.token_file))
    if args.command == "keys":
        raise SystemExit(apikeys_cli.run(args))
    if args.command == "render":
        raise SystemExit(render_cli.run(args))
    try:
        deployments = load_deployments(args.configs)
        apps = load_apps(deployments)  # applications import and declare their endpoints correctly, or nothing starts
    except ConfigError as exc:
        print("tiffin: the deployment configuration is invalid; nothing was started:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
    problems = machine_problems(args.configs)
    if problems:
        print("tiffin: this machine cannot run the deployment configuration; nothing was started:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2)
    if args.command == "check":
        for dep in deployments:
            access = "API key required" if dep.auth.require_api_key else "OPEN to anyone: auth.require_api_key is false"
            app = f", app {dep.app.entry}: {', '.join(endpoints_of(apps[dep.name]))}" if dep.app else ""
            say(f"{dep.name}: ok (model {dep.model}, served as '{dep.model_name}', prefix {dep.routing.path_prefix}, "
                f"{access}{app})")  # fmt: skip
        return
    try:
        raise SystemExit(asyncio.run(up(args, deployments)))
    except TLSError as exc:
        print(f"tiffin: the TLS configuration is invalid; nothing was started:\n  {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ModelError, RedisServerError) as exc:
        print(f"tiffin: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
