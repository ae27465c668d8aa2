"""tiffin against tiffin: several code trees side by side in one run, wrk alternating between them.

    .venv/bin/python bench/abtiffin.py --rev before=main --rev after=HEAD [--without after-noloop=after:uvloop]

Timings on a shared machine drift by 2x between runs, so a change to the request path is judged here: each
variant is a `tiffin up` of its own (the bench/peers.py configuration: warm, plain HTTP, an API key, the same
fastupstream runner), all started at once, and every scenario runs on each in turn, round after round. Besides
wrk's rate and latency it reads each variant's CPU time per component from /proc: CPU milliseconds per request
are what load disturbs least. `--rev NAME=REV` runs the tree of a git revision (extracted under .bench/ab/);
`--without NAME=BASE:MODULE` runs BASE's tree with MODULE hidden (e.g. uvloop or hiredis, to measure what it
brings). Results: a table of medians, and JSON in .bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import proctree  # noqa: E402
import wrk  # noqa: E402

COMPONENTS = ("interceptor", "proxy", "api server", "redis")


@dataclass
class Variant:
    """One code tree to run, with the modules to hide from it."""

    name: str
    root: Path
    hidden: tuple[str, ...] = ()


def extract(rev: str, into: Path) -> Path:
    """The tree of git revision `rev`, extracted into `into` (afresh)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=peers.ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def variant_env(variant: Variant, work: Path) -> dict[str, str]:
    """PYTHONPATH for a variant: its tree, after a sitecustomize hiding its hidden modules (if any)."""
    paths = [str(variant.root)]
    if variant.hidden:
        site = work / f"{variant.name}-site"
        site.mkdir(parents=True, exist_ok=True)
        lines = ["import sys"] + [f"sys.modules[{m!r}] = None  # hidden by bench/abtiffin.py" for m in variant.hidden]
        (site / "sitecustomize.py").write_text("\n".join(lines) + "\n")
        paths.insert(0, str(site))
    return {"PYTHONPATH": os.pathsep.join(paths)}


def parse_variants(args: argparse.Namespace, work: Path) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for spec in args.rev:
        name, _, rev = spec.partition("=")
        if not name or not rev:
            raise SystemExit(f"abtiffin: --rev wants NAME=REV, got {spec!r}")
        variants[name] = Variant(name, extract(rev, work / f"{name}-tree"))
    for spec in args.without:
        name, _, rest = spec.partition("=")
        base, _, module = rest.partition(":")
        if base not in variants or not module:
            raise SystemExit(f"abtiffin: --without wants NAME=BASE:MODULE with BASE given by --rev, got {spec!r}")
        variants[name] = Variant(name, variants[base].root, (*variants[base].hidden, module))
    if len(variants) < 2:
        raise SystemExit("abtiffin: give at least two variants (--rev, --without)")
    return list(variants.values())


def measure(started: list[peers.Peer], scripts: Path, duration: float, rounds: int) -> dict[str, dict[str, list[dict]]]:
    """Every scenario on every variant in turn, `rounds` times: rate, latency and CPU ms per request."""
    results: dict[str, dict[str, list[dict]]] = {p.name: {s: [] for s in peers.SCENARIOS} for p in started}
    for round_no in range(rounds):
        for scenario, (connections, stream) in peers.SCENARIOS.items():
            for peer in started:
                body = {"model": peers.MODEL, "messages": peers.PROMPT, "stream": stream}
                script = wrk.write_script(scripts, f"{peer.name}-{scenario}", body, peer.key)
                before = proctree.cpu_by_component(peer.procs[0].pid)
                result = wrk.run(peer.url + "/v1/chat/completions", script, connections, duration)
                after = proctree.cpu_by_component(peer.procs[0].pid)
                cpu = {n: (after[n] - before.get(n, 0.0)) * 1000 / max(result.requests, 1) for n in after}
                results[peer.name][scenario].append({"rate": result.rate, "p50_ms": result.p50_ms,
                                                     "p99_ms": result.p99_ms, "cpu_ms_per_request": cpu})  # fmt: skip
                shown = " ".join(f"{n}={cpu.get(n, 0):.3f}" for n in COMPONENTS)
                peers.say(f"round {round_no + 1} {scenario:9} {peer.name:14} {result.rate:7.0f}/s p50 "
                          f"{result.p50_ms:7.2f} ms p99 {result.p99_ms:8.2f} ms cpu ms/req {shown}")  # fmt: skip
    return results


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Medians per variant and scenario: rate, p50, p99, CPU ms per request per component and in all."""
    lines = ["variant        scenario    req/s   p50 ms   p99 ms | " + " ".join(f"{c[:11]:>11}" for c in COMPONENTS)
             + "       total"]  # fmt: skip
    for name, scenarios in results.items():
        for scenario, rows in scenarios.items():
            med = statistics.median
            cpu = [med([r["cpu_ms_per_request"].get(c, 0.0) for r in rows]) for c in COMPONENTS]
            total = med([sum(r["cpu_ms_per_request"].get(c, 0.0) for c in COMPONENTS) for r in rows])
            lines.append(f"{name:14} {scenario:9} {med([r['rate'] for r in rows]):7.0f} "
                         f"{med([r['p50_ms'] for r in rows]):8.2f} {med([r['p99_ms'] for r in rows]):8.2f} | "
                         + " ".join(f"{v:11.3f}" for v in cpu) + f" {total:11.3f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", action="append", default=[], help="NAME=REV: a git revision's tree (repeat)")
    parser.add_argument("--without", action="append", default=[], help="NAME=BASE:MODULE: BASE with MODULE hidden")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: the stacks go down too
    peers.ensure_apt("wrk")
    work = peers.WORK / "ab"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = peers.WORK / "logs" / f"ab-{stamp}"
    for folder in (logs, peers.WORK / "wrk", peers.WORK / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args, work)
    procs = []
    try:
        _upstream, upstream_proc = peers.start_upstream(logs)
        procs.append(upstream_proc)
        started: list[peers.Peer] = []
        for variant in variants:
            peers.say(f"starting {variant.name} ({variant.root}{', without ' if variant.hidden else ''}"
                      f"{', '.join(variant.hidden)})")  # fmt: skip
            (logs / variant.name).mkdir()
            peer = peers.start_tiffin(logs / variant.name, root=variant.root, folder=work / f"{variant.name}-state",
                                      env=variant_env(variant, work))  # fmt: skip
            peer.name = variant.name
            procs += peer.procs
            started.append(peer)
        results = measure(started, peers.WORK / "wrk", args.duration, args.rounds)
    finally:
        for proc in reversed(procs):
            peers.stop(proc)
    print(f"\n{table(results)}")
    out = peers.WORK / "results" / f"ab-{stamp}.json"
    described = [{"name": v.name, "root": str(v.root), "hidden": list(v.hidden)} for v in variants]
    summary = {"date": stamp, "variants": described, "duration_s": args.duration, "rounds": args.rounds}
    out.write_text(json.dumps({**summary, "runs": results}, indent=1))
    peers.say(f"results: {out}")


if __name__ == "__main__":
    main()
