"""`tiffin keys create | list | revoke`: API keys in the state of `--state-dir` (or REDIS_URL).

They work whether `tiffin up` runs or not (see `tiffin.local.redis_server.state_redis`). `create` prints the key
alone on stdout (so `KEY=$(tiffin keys create NAME)` works) and everything else on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys
from tiffin.contracts.apikeys import KeyInfo, KeyLimitsOverride, create_key, key_id_of, list_keys, revoke_key
from tiffin.contracts.config import Deployment, load_deployments
from tiffin.contracts.exceptions import ConfigError, RedisServerError
from tiffin.local.redis_server import redis_data_dir, state_redis


def _note(message: str) -> None:
    print(f"tiffin: {message}", file=sys.stderr, flush=True)


def add_parser(sub: Any) -> None:
    """The `keys` command and its subcommands, on the main parser's subparsers."""
    keys_cmd = sub.add_parser("keys", help="make, list and revoke API keys (works with or without tiffin running)")
    ksub = keys_cmd.add_subparsers(dest="keys_command", required=True)

    def state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TIFFIN_STATE_DIR", ".state")),
                       help="the state folder of `tiffin up` (default: ./.state or TIFFIN_STATE_DIR); "
                            "REDIS_URL, when set, wins as it does for `tiffin up`")  # fmt: skip

    create = ksub.add_parser("create", help="make a key for one or more deployments; it is shown once")
    create.add_argument("deployments", nargs="+", metavar="DEPLOYMENT", help="deployment names the key opens")
    create.add_argument("--name", default="", help="a label to recognise the key by in `tiffin keys list`")
    create.add_argument(
        "--rps", type=float, default=None, help="requests per second (default: the deployment's auth.per_key; 0: none)"
    )
    create.add_argument(
        "--burst", type=int, default=None, help="requests at once above that rate (default: deployment's)"
    )
    create.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in progress at once (default: the deployment's; 0: none)",
    )
    create.add_argument(
        "--config", type=Path, action="append", default=None, metavar="CONFIG",
        help="a deployment file or folder to check the names against (refuses unknown names; repeatable)",
    )  # fmt: skip
    state_dir(create)

    listing = ksub.add_parser("list", help="every key: id, deployments, label, created, last used (never secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    state_dir(listing)

    revoke = ksub.add_parser("revoke", help="revoke keys by id; running interceptors refuse them within a second")
    revoke.add_argument("ids", nargs="+", metavar="ID", help="key ids from `tiffin keys list` (or whole keys)")
    state_dir(revoke)


def run(args: argparse.Namespace) -> int:
    """Run a `tiffin keys` subcommand; the exit status."""
    try:
        return asyncio.run(_run(args))
    except (RedisError, OSError, RedisServerError) as exc:
        _note(f"cannot reach tiffin's Redis for {args.state_dir}: {exc}")
        return 1


async def _run(args: argparse.Namespace) -> int:
    configured: list[Deployment] | None = None
    if args.keys_command == "create" and args.config:
        try:
            configured = load_deployments(args.config)
        except ConfigError as exc:
            _note("the deployment configuration is invalid:")
            for line in exc.problems:
                print(f"  {line}", file=sys.stderr)
            return 2
    fresh = not os.environ.get("REDIS_URL") and not redis_data_dir(args.state_dir).exists()
    if fresh and args.keys_command != "create":
        _note(f"no tiffin state in {args.state_dir} (no Redis data there); pass the --state-dir of your `tiffin up`")
        return 1
    async with state_redis(args.state_dir) as state:
        if fresh:
            _note(f"{args.state_dir} held no tiffin state yet; `tiffin up --state-dir {args.state_dir}` will use it")
        if args.keys_command == "create":
            return await _create(state.client, args, configured)
        if args.keys_command == "list":
            return await _list(state.client, args.json)
        return await _revoke(state.client, args.ids)


async def _known_deployments(redis: Redis) -> set[str]:
    """Deployments that ran with this state: every interceptor creates its deployments' queues at start."""
    prefix = keys.queue("")
    return {k.decode()[len(prefix) :] async for k in redis.scan_iter(match=keys.QUEUE_PATTERN, count=1000)}


async def _create(redis: Redis, args: argparse.Namespace, configured: list[Deployment] | None) -> int:
    names = sorted(set(args.deployments))
    if configured is not None:
        by_name = {d.name: d for d in configured}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            _note(f"no deployment named {', '.join(unknown)} in {' '.join(map(str, args.config))} "
                  f"(there: {', '.join(sorted(by_name)) or 'none'}); no key was made")  # fmt: skip
            return 2
        for name in names:
            if not by_name[name].auth.require_api_key:
                _note(f"note: {name} is open (auth.require_api_key: false): it takes requests without a key")
    limits = KeyLimitsOverride(requests_per_second=args.rps, burst=args.burst, concurrency=args.concurrency)
    try:
        key, token = await create_key(redis, names, args.name, limits)
    except ValueError as exc:
        _note(f"{exc}; no key was made")
        return 2
    known = await _known_deployments(redis)
    label = f" ('{key.name}')" if key.name else ""
    _note(f"created API key {key.id}{label} for {', '.join(names)}; limits: {_limits_text(limits)}")
    for name in names:
        if configured is None and name not in known:
            # Not an error: the deployment may simply not have been started yet. But a typo must be visible.
            _note(f"WARNING: no deployment named '{name}' has run with this state yet "
                  f"(known: {', '.join(sorted(known)) or 'none'}); the key opens it once one does. "
                  "Check the spelling, or pass --config to check against your files.")  # fmt: skip
    _note("the key is shown only now (tiffin keeps only its hash); store it safely:")
    print(token, flush=True)
    _note('use it as the OpenAI client\'s api_key, or: curl ... -H "Authorization: Bearer $KEY"')
    return 0


def _limits_text(limits: KeyLimitsOverride) -> str:
    own = limits.describe()
    return "the deployment's defaults (auth.per_key)" if own == "-" else f"{own} (the rest: deployment defaults)"


def _when(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


async def _list(redis: Redis, as_json: bool) -> int:
    found = await list_keys(redis)
    if as_json:
        print(json.dumps([_to_json(info) for info in found], indent=2))
        return 0
    if not found:
        _note("no API keys; make one with `tiffin keys create DEPLOYMENT`")
        return 0
    header = ("ID", "DEPLOYMENTS", "LABEL", "CREATED", "LAST USED", "OWN LIMITS")
    rows = [header]
    for info in found:
        key = info.key
        rows.append((key.id, ",".join(sorted(key.deployments)), key.name or "-", _when(key.created_ms),
                     _when(info.last_used_ms), key.limits.describe()))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _to_json(info: KeyInfo) -> dict[str, Any]:
    key, limits = info.key, info.key.limits
    return {
        "id": key.id,
        "deployments": sorted(key.deployments),
        "name": key.name,
        "created_ms": key.created_ms,
        "last_used_ms": info.last_used_ms,
        "limits": {
            "requests_per_second": limits.requests_per_second,
            "burst": limits.burst,
            "concurrency": limits.concurrency,
        },
    }


async def _revoke(redis: Redis, ids: list[str]) -> int:
    status = 0
    for text in ids:
        key_id = key_id_of(text)
        gone = await revoke_key(redis, key_id) if key_id else None
        if gone is None:
            _note(f"no API key with id '{key_id or text}'; `tiffin keys list` shows the ids")
            status = 1
            continue
        _note(f"revoked {gone.id} ({', '.join(sorted(gone.deployments))}); running interceptors refuse it "
              "within a second")  # fmt: skip
    return status
