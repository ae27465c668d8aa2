"""tiffin's request path against the gateways users know, side by side in one run, measured with wrk.

    .venv/bin/python bench/peers.py [--duration 6] [--rounds 2] [--peers direct,nginx,vllm-router,litellm,tiffin]

The same trivial upstream (bench/fastupstream.py) sits behind each: called directly, through nginx (keepalive,
buffering off), vllm-router (Rust), the LiteLLM proxy (Python, 2 workers) and tiffin (warm, with an API key,
plain HTTP like the others). Each peer is installed by this script into its own environment under
`.bench/envs/` (nginx and wrk from apt where missing). Scenarios: concurrency 1 (p50), concurrency 32 (req/s,
p99), and 8 concurrent streams of 200 SSE chunks each (streams/s). Rounds alternate the peers, since timings on a
shared machine drift. For tiffin it also reads each process's CPU time from /proc during the concurrency-32 run:
CPU milliseconds per request per component. Results: JSON and a PNG chart in `.bench/results/`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import proctree  # noqa: E402
import wrk  # noqa: E402

from tiffin.local.ports import free_port  # noqa: E402

WORK = ROOT / ".bench"
MODEL = "bench"
PROMPT = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
SCENARIOS = {  # name: (connections, stream)
    "c1": (1, False),
    "c32": (32, False),
    "stream_c8": (8, True),
}
PEERS = ("direct", "nginx", "vllm-router", "litellm", "tiffin")
# What `tiffin up` prints once for a deployment that requires keys (group 1: the key).
KEY_PRINTED = re.compile(r"API key \(shown only now[^:]*: (tfn_\S+)")


@dataclass
class Peer:
    """A gateway under test: its base URL, its processes, the bearer key it wants."""

    name: str
    url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    key: str = ""


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """A process in its own session (so its whole group can be stopped), output in `log`; run in `cwd`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True, cwd=cwd)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT if proc.args[2:4] == ["tiffin", "up"] else signal.SIGTERM)  # type: ignore[index]
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_answering(url: str, proc: subprocess.Popen[bytes], log: Path, key: str = "", timeout_s: float = 300) -> None:
    """Until a chat completion through `url` answers 200 (or the process dies: then show its log)."""
    body = json.dumps({"model": MODEL, "messages": PROMPT}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {proc.args} exited ({proc.returncode}); its log:\n{log.read_text()[-3000:]}")
        request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers)
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(request, timeout=5) as resp,
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} never answered; log {log}")
        time.sleep(0.3)


def ensure_apt(*packages: str) -> None:
    """Install Debian packages whose command is missing (as root), or say how."""
    missing = [p for p in packages if not shutil.which(p) and not Path(f"/usr/sbin/{p}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    say(f"installing {', '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL)


def ensure_venv(name: str, requirement: str, command: str) -> Path:
    """A throwaway venv under .bench/envs/NAME holding `requirement`; returns the path of its `command`."""
    env = WORK / "envs" / name
    binary = env / "bin" / command
    if binary.exists():
        return binary
    say(f"installing {requirement} into {env} (once; minutes for litellm)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    subprocess.run([str(env / "bin" / "pip"), "install", "-q", "--progress-bar", "off", requirement], check=True)
    return binary


def start_upstream(logs: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = start([sys.executable, str(BENCH / "fastupstream.py"), "--port", str(port), "--served-model-name", MODEL],
                 logs / "upstream.log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_answering(url, proc, logs / "upstream.log")
    return url, proc


def start_nginx(upstream: str, logs: Path) -> Peer:
    ensure_apt("nginx")
    prefix = WORK / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {logs}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
  uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  upstream up {{ server {upstream.removeprefix("http://")}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = start([nginx, "-p", str(prefix), "-c", str(conf)], logs / "nginx.log")
    peer = Peer("nginx", f"http://127.0.0.1:{port}", [proc])
    wait_answering(peer.url, proc, logs / "nginx.log")
    return peer


def start_vllm_router(upstream: str, logs: Path) -> Peer:
    binary = ensure_venv("vllm-router", "vllm-router", "vllm-router")
    port = free_port()
    proc = start([str(binary), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", upstream,
                  "--policy", "round_robin", "--disable-retries", "--disable-circuit-breaker",
                  "--prometheus-port", str(free_port())], logs / "vllm-router.log")  # fmt: skip
    peer = Peer("vllm-router", f"http://127.0.0.1:{port}", [proc])
    wait_answering(peer.url, proc, logs / "vllm-router.log")
    return peer


def start_litellm(upstream: str, logs: Path) -> Peer:
    binary = ensure_venv("litellm", "litellm[proxy]", "litellm")
    config = WORK / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}",
                                                                 "api_base": upstream + "/v1", "api_key": "none"}}],
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }))  # fmt: skip
    port = free_port()
    proc = start([str(binary), "--config", str(config), "--port", str(port), "--num_workers", "2"],
                 logs / "litellm.log", env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})  # fmt: skip
    peer = Peer("litellm", f"http://127.0.0.1:{port}", [proc])
    wait_answering(peer.url, proc, logs / "litellm.log", timeout_s=600)
    return peer


def start_tiffin(logs: Path, root: Path = ROOT, folder: Path | None = None, env: dict[str, str] | None = None) -> Peer:
    """`tiffin up` kept warm with the same upstream as its runner; plain HTTP as the other peers; with a key.

    `root`: the code tree to run (`python -m` imports from its working directory first); `folder`: its state."""
    folder = folder or WORK / "tiffin"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    runner = [sys.executable, str(BENCH / "fastupstream.py"), "--port", "{port}",
              "--served-model-name", "{served_model_name}"]  # fmt: skip
    config = {"name": MODEL, "model": str(folder / "model"),
              "api": {"concurrency": 256, "min_replicas": 1, "max_replicas": 1},
              "runner": {"command": runner, "concurrency": 256, "min_replicas": 1},
              "limits": {"max_queue": 10_000},
              "auth": {"per_key": {"requests_per_second": 1e6, "burst": 10**6, "concurrency": 10**5}}}  # fmt: skip
    (folder / "bench.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = start([sys.executable, "-m", "tiffin", "up", str(folder / "bench.yaml"), "--plain-http", "--port",
                  str(port), "--admin-port", str(free_port()), "--state-dir", str(folder / "state")],
                 logs / "tiffin.log", env=env, cwd=root)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (found := KEY_PRINTED.search((logs / "tiffin.log").read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: tiffin up failed; its log:\n{(logs / 'tiffin.log').read_text()[-3000:]}")
        time.sleep(0.3)
    peer = Peer("tiffin", f"http://127.0.0.1:{port}", [proc], key=found.group(1))
    wait_answering(peer.url, proc, logs / "tiffin.log", key=peer.key)
    return peer


def measure(peers: list[Peer], scripts: Path, duration: float, rounds: int) -> dict[str, dict[str, list[dict]]]:
    """Every scenario for every peer, `rounds` times, peers alternating within each round."""
    results: dict[str, dict[str, list[dict]]] = {p.name: {s: [] for s in SCENARIOS} for p in peers}
    for round_no in range(rounds):
        for scenario, (connections, stream) in SCENARIOS.items():
            for peer in peers:
                body = {"model": MODEL, "messages": PROMPT, "stream": stream}
                script = wrk.write_script(scripts, f"{peer.name}-{scenario}", body, peer.key)
                tiffin_root = peer.procs[0].pid if peer.name == "tiffin" and scenario == "c32" else None
                cpu_before = proctree.cpu_by_component(tiffin_root) if tiffin_root else {}
                result = wrk.run(peer.url + "/v1/chat/completions", script, connections, duration)
                row = {**asdict(result), "rate": result.rate}
                if tiffin_root:
                    after = proctree.cpu_by_component(tiffin_root)
                    used = {name: after[name] - cpu_before.get(name, 0.0) for name in after}
                    per_request = {n: round(s * 1000 / max(result.requests, 1), 4) for n, s in used.items()}
                    row["cpu_ms_per_request"] = per_request
                results[peer.name][scenario].append(row)
                say(f"round {round_no + 1} {scenario:9} {peer.name:12} {result.rate:9.0f}/s p50 {result.p50_ms:7.2f} "
                    f"ms p99 {result.p99_ms:7.2f} ms errors {result.socket_errors + result.status_errors}")  # fmt: skip
    return results


def median(values: list[float]) -> float:
    """The median over rounds (of two rounds, their mean: neither the better nor the worse)."""
    return statistics.median(values) if values else float("nan")


def summarise(results: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, float]]:
    """Per peer: c1 p50, c32 req/s and p99, streams/s (medians over rounds), and ratios against direct."""
    table: dict[str, dict[str, float]] = {}
    for name, scenarios in results.items():
        table[name] = {
            "c1_p50_ms": median([r["p50_ms"] for r in scenarios["c1"]]),
            "c32_rps": median([r["rate"] for r in scenarios["c32"]]),
            "c32_p99_ms": median([r["p99_ms"] for r in scenarios["c32"]]),
            "stream_c8_per_s": median([r["rate"] for r in scenarios["stream_c8"]]),
        }
    if "direct" in table:
        base = table["direct"]
        for row in table.values():
            row["c1_added_p50_ms"] = row["c1_p50_ms"] - base["c1_p50_ms"]
            row["c32_rps_ratio"] = row["c32_rps"] / base["c32_rps"]
            row["stream_ratio"] = row["stream_c8_per_s"] / base["stream_c8_per_s"]
    return table


def chart(table: dict[str, dict[str, float]], path: Path) -> bool:
    """A PNG of the table's three headline numbers per peer (needs matplotlib: the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("no chart: matplotlib is missing (.venv/bin/pip install -e '.[bench]')")
        return False
    names = list(table)
    panels = (("c32_rps", "requests/s at concurrency 32"), ("c1_p50_ms", "p50 latency at concurrency 1 (ms)"),
              ("stream_c8_per_s", "streams/s (200 chunks, 8 at once)"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.bar(names, [table[n][key] for n in names], color=["#888" if n != "tiffin" else "#d2691e" for n in names])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        if key == "c1_p50_ms":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


@contextlib.contextmanager
def running(args: argparse.Namespace, logs: Path) -> Iterator[list[Peer]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, proc = start_upstream(logs)
        procs.append(proc)
        peers: list[Peer] = []
        starters = {"nginx": start_nginx, "vllm-router": start_vllm_router, "litellm": start_litellm}
        for name in args.peers:
            say(f"starting {name}")
            if name == "direct":
                peer = Peer("direct", upstream)
            elif name == "tiffin":
                peer = start_tiffin(logs)
            else:
                peer = starters[name](upstream, logs)
            procs += peer.procs
            peers.append(peer)
        yield peers
    finally:
        for proc in reversed(procs):
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run (default 6)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {','.join(PEERS)}")
    args = parser.parse_args()
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        raise SystemExit(f"bench: unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    ensure_apt("wrk")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / "results"
    logs = WORK / "logs" / stamp
    for folder in (out, logs, WORK / "wrk"):
        folder.mkdir(parents=True, exist_ok=True)
    with running(args, logs) as peers:
        results = measure(peers, WORK / "wrk", args.duration, args.rounds)
    table = summarise(results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit.strip(), "cpus": os.cpu_count(),
              "duration_s": args.duration, "rounds": args.rounds, "summary": table, "runs": results}  # fmt: skip
    path = out / f"peers-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\n{'peer':12} {'c1 p50 ms':>10} {'c32 req/s':>10} {'c32 p99 ms':>11} {'streams/s':>10} {'x direct':>9}")
    for name, row in table.items():
        print(f"{name:12} {row['c1_p50_ms']:10.2f} {row['c32_rps']:10.0f} {row['c32_p99_ms']:11.2f} "
              f"{row['stream_c8_per_s']:10.0f} {row.get('c32_rps_ratio', float('nan')):9.3f}")  # fmt: skip
    tiffin_cpu = [r["cpu_ms_per_request"] for r in results.get("tiffin", {}).get("c32", [])]
    if tiffin_cpu:
        print("\ntiffin CPU ms per request at concurrency 32 (median over rounds):")
        for name in sorted(tiffin_cpu[0], key=lambda n: -tiffin_cpu[0][n]):
            print(f"  {name:20} {median([r.get(name, 0.0) for r in tiffin_cpu]):7.3f}")
    png = out / f"peers-{stamp}.png"
    say(f"results: {path}" + (f", chart: {png}" if chart(table, png) else ""))


if __name__ == "__main__":
    main()
