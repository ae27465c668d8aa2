"""How `tiffin up` serves its public listener: given certificates, the local CA, or plain HTTP when asked."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tiffin.common.env import env_bool, env_paths
from tiffin.contracts.exceptions import TLSError
from tiffin.tls.localca import ensure_local_tls, hosts_for, machine_names
from tiffin.tls.pair import load_pair, pairs_from
from tiffin.tls.store import EXPIRY_WARNING

_INDENT = " " * 12

RENEW_CHECK_S = 6 * 3600.0
"""How often a running `tiffin up` checks its local certificate (re-issued 30 days before it expires)."""


@dataclass(frozen=True)
class EdgeTLS:
    """The interceptor's TLS environment and what `tiffin up` tells the user about it."""

    env: dict[str, str]
    scheme: str
    ca_file: Path | None = None
    """The local CA clients must trust (None with certificates of one's own, or plain HTTP)."""
    notes: list[str] = field(default_factory=list)
    """Lines to print once the endpoint is known (`{url}` stands for the public base URL)."""
    names: list[str] = field(default_factory=list)
    """Host names the certificates cover (with certificates of one's own: what clients should connect to)."""

    def curl_flag(self) -> str:
        """What `curl` needs to verify tiffin's certificate (with a trailing space), or nothing."""
        return f"--cacert {shlex.quote(_shown(self.ca_file))} " if self.ca_file else ""


def plan_edge_tls(cert_files: list[Path], key_files: list[Path], plain_http: bool, state_dir: Path,
                  host: str) -> EdgeTLS:  # fmt: skip
    """Decide how the public listener serves: the CLI's flags first, then TIFFIN_TLS_* / TIFFIN_PLAIN_HTTP from
    the environment, else a local CA in `state_dir/tls/`. Bad certificate files are a `TLSError`."""
    source = "--tls-cert/--tls-key"
    if not (cert_files or key_files or plain_http):
        cert_files, key_files = env_paths("TIFFIN_TLS_CERT_FILES"), env_paths("TIFFIN_TLS_KEY_FILES")
        plain_http = env_bool("TIFFIN_PLAIN_HTTP")
        source = "TIFFIN_TLS_CERT_FILES/TIFFIN_TLS_KEY_FILES"
    if plain_http and (cert_files or key_files):
        raise TLSError(f"plain HTTP and {source} exclude each other: choose one")
    if plain_http:
        return EdgeTLS(env={"TIFFIN_PLAIN_HTTP": "1", "TIFFIN_TLS_CERT_FILES": "", "TIFFIN_TLS_KEY_FILES": ""},
                       scheme="http", notes=[
            "WARNING     plain HTTP (--plain-http): prompts, answers and API keys travel unencrypted. Use it only "
            "behind a TLS-terminating proxy (ingress, load balancer) that reaches tiffin over a trusted network.",
        ])  # fmt: skip
    if cert_files or key_files:
        pairs = [load_pair(p) for p in pairs_from([p.resolve() for p in cert_files], [p.resolve() for p in key_files],
                                                  source)]  # fmt: skip
        notes = [
            f"tls         certificate {p.pair.cert_file} for {', '.join(p.hosts) or '(no names)'} "
            f"({_validity(p.not_after)}; renewed files are picked up without a restart)"
            for p in pairs
        ]
        names = [h for p in pairs for h in p.hosts]
        return EdgeTLS(env=_env([p.pair.cert_file for p in pairs], [p.pair.key_file for p in pairs]), scheme="https",
                       notes=notes, names=names)  # fmt: skip
    try:
        local = ensure_local_tls(state_dir / "tls", hosts_for(host), if_permitted=machine_names(host))
    except OSError as exc:
        raise TLSError(f"{state_dir / 'tls'}: cannot keep the local CA there ({exc.strerror or exc})") from exc
    ca = _shown(local.ca_file)
    if local.ca_made is None:
        made = "reused; made on the first run"
    elif local.ca_made == "first run":
        made = "new: made once, reused on later runs"
    else:
        made = f"NEW because {local.ca_made}: clients must trust it instead of the previous one"
    notes = [f"tls         local CA {ca} ({made}); trust it to verify tiffin's certificate:"]
    if local.issued not in (None, "first run"):
        notes.append(f"{_INDENT}server certificate re-issued by the same CA: {local.issued}")
    notes += [
        f"{_INDENT}curl --cacert {shlex.quote(ca)} -H \"Authorization: Bearer $TIFFIN_API_KEY\" {{url}}/v1/models",
        f"{_INDENT}SSL_CERT_FILE={shlex.quote(ca)} python your_client.py   "
        "(openai and httpx then trust this CA instead of their default bundle, in that whole process)",
        f"{_INDENT}OpenAI(..., http_client=DefaultHttpxClient(verify={_python_context(ca)}))"
        "   (import ssl; from openai import OpenAI, DefaultHttpxClient)",
    ]  # fmt: skip
    return EdgeTLS(env=_env([local.cert_file], [local.key_file]), scheme="https", ca_file=local.ca_file, notes=notes,
                   names=local.hosts)  # fmt: skip


def _validity(not_after: dt.datetime) -> str:
    left = not_after - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return f"EXPIRED on {not_after:%Y-%m-%d}: clients will refuse it"
    if left < EXPIRY_WARNING:
        return f"EXPIRES in {left.days} days, on {not_after:%Y-%m-%d}"
    return f"until {not_after:%Y-%m-%d}"


def _python_context(ca: str) -> str:
    """The Python expression of a client context trusting `ca` (httpx's `verify=<path>` is deprecated)."""
    return f"ssl.create_default_context(cafile={json.dumps(ca)})"


def _env(certs: list[Path], keys: list[Path]) -> dict[str, str]:
    return {"TIFFIN_TLS_CERT_FILES": os.pathsep.join(map(str, certs)),
            "TIFFIN_TLS_KEY_FILES": os.pathsep.join(map(str, keys)), "TIFFIN_PLAIN_HTTP": "0"}  # fmt: skip


def _shown(path: Path | None) -> str:
    """A path as the user should type it: relative to the current folder when inside it."""
    assert path is not None
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


async def keep_local_tls_fresh(
    state_dir: Path,
    host: str,
    stop: asyncio.Event,
    say: Callable[[str], None],
    period_s: float = RENEW_CHECK_S,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> None:
    """Re-issue the local server certificate while `tiffin up` runs, not only at its start (the interceptor picks
    renewed files up by itself); until `stop`."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
        if stop.is_set():
            return
        try:
            local = await asyncio.to_thread(ensure_local_tls, state_dir / "tls", hosts_for(host), clock(),
                                            if_permitted=machine_names(host))  # fmt: skip
        except OSError as exc:
            say(f"tls         could not renew the local certificate in {state_dir / 'tls'}: {exc}; retrying later")
            continue
        if local.ca_made is not None:
            say(f"tls         NEW local CA {_shown(local.ca_file)} because {local.ca_made}: clients must trust it "
                "instead of the previous one")  # fmt: skip
        if local.issued is not None:
            say(f"tls         server certificate re-issued by the local CA ({local.issued}); "
                f"valid until {local.not_after:%Y-%m-%d}, served without a restart")  # fmt: skip
