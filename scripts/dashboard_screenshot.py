"""Remake docs/img/dashboard.png: a real `tiffin up` with one deployment woken by traffic and one left idle.

    .venv/bin/python scripts/dashboard_screenshot.py [OUT.png] [--traffic-s 30]

The runners are the test upstream (tests/upstream.py), so no model loads; everything else is tiffin as a user
runs it. Needs Debian's chromium (scripts/setup_browser.sh) and the `playwright` package of the test extra.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import UPSTREAM  # noqa: E402  (the repository root is importable only from here on)
from tests.e2e.up import Up  # noqa: E402

DEPLOYMENTS = (("smollm2", "smollm2"), ("qwen-coder", "qwen2.5-coder"))


def write_configs(folder: Path) -> list[Path]:
    """Two open deployments whose runner is the test upstream, with tiffin's default scaling."""
    paths = []
    for name, served in DEPLOYMENTS:
        model = folder / "models" / name
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        data = {"name": name, "model": str(model), "served_model_name": served, "auth": {"require_api_key": False},
                "runner": {"command": UPSTREAM, "concurrency": 8}, "api": {"concurrency": 32}}  # fmt: skip
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    return paths


def ask(url: str, tls: ssl.SSLContext, text: str) -> None:
    """One chat request to the first deployment, read to the end."""
    body = {"model": DEPLOYMENTS[0][1], "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120, context=tls) as resp:
        resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "img" / "dashboard.png"))
    parser.add_argument("--traffic-s", type=float, default=30.0, help="how long to send requests after the wake")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tiffin-screenshot-") as tmp:
        folder = Path(tmp)
        up = Up(write_configs(folder), folder / "state")
        try:
            up.wait_for_line(f"ready: {DEPLOYMENTS[-1][0]}", timeout_s=120)
            tls = up.ssl_context()
            with sync_playwright() as pw:
                chromium = "/usr/bin/chromium"
                browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"http://127.0.0.1:{up.admin_port}/dashboard#{DEPLOYMENTS[0][0]}")
                ask(up.url, tls, "wake up")  # the cold start
                end = time.monotonic() + args.traffic_s
                i = 0
                while time.monotonic() < end:
                    ask(up.url, tls, f"hello {i}")
                    i += 1
                    time.sleep(0.3)  # a steady trickle of traffic for the charts, not synchronisation
                page.wait_for_selector(f'tr[data-name="{DEPLOYMENTS[0][0]}"][data-state="warm"]', timeout=60_000)
                page.wait_for_timeout(4000)  # two polls after the last request: the page shows it
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            up.proc.stop(timeout_s=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
