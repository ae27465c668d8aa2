"""The dashboard as a user sees it: headless Chromium against `tiffin up` and against a token-guarded interceptor.

Debian's Chromium (/usr/bin/chromium, installed by scripts/setup_browser.sh) driven by Python playwright.
The runner of the woken deployment waits on a gate the test opens (tests/e2e/gated.py), so the page is seen
waking for as long as the test needs, without timing luck. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import UPSTREAM, Stack, write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup_browser.sh installs it as root)"
)
ARTIFACTS = ROOT / "test-artifacts"
WIDE = {"width": 1400, "height": 1000}
NARROW = {"width": 390, "height": 844}
# Generous: replicas start as real processes on a busy 2-core machine.
SLOW_MS = 120_000
TOKEN = "dashboard-admin-token-0123456789"


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


# One request, either queued (waiting for a replica) or in flight (taken, waiting for the held runner).
WAITING_OR_TAKEN = """name => {
    const text = field => document.querySelector(`tr[data-name="${name}"] td[data-field="${field}"]`)?.textContent;
    const [queued, inFlight] = [text("queued"), text("in_flight")];
    return (queued === "1 req" && inFlight === "0 req") || (queued === "0 req" && inFlight === "1 req");
}"""


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def cell(page: Any, deployment: str, field: str) -> Any:
    return page.locator(f'tr[data-name="{deployment}"] td[data-field="{field}"]')


def ask(url: str, tls: ssl.SSLContext, out: dict[str, Any]) -> None:
    """One chat request (blocking until answered); its status and reply text land in `out`."""
    body = {"model": "sleepy", "messages": [{"role": "user", "content": "wake up"}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=300, context=tls) as resp:
        out["status"] = resp.status
        out["text"] = json.load(resp)["choices"][0]["message"]["content"]


def open_gate(gate: Path) -> None:
    """Let the gated runner start: opening the pipe for writing waits for its reader, closing releases it."""
    with open(gate, "wb") as fifo:
        fifo.write(b"go")


def test_the_page_follows_a_deployment_from_idle_through_waking_and_warm_back_to_idle(
    browser: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "runner-gate"
    os.mkfifo(gate)
    gated = [sys.executable, str(ROOT / "tests" / "e2e" / "gated.py"), str(gate), "--", *UPSTREAM]
    scaling = {"idle_period_s": 3, "scale_down_window_s": 2}
    configs = [
        write_deployment(tmp_path, "sleepy", runner={"command": gated}, scaling=scaling,
                         limits={"wait_timeout_s": 240, "upstream_timeout_s": 60}),
        write_deployment(tmp_path, "quiet", scaling=scaling),
    ]  # fmt: skip
    up = Up(configs, tmp_path / "state")
    expect = playwright_api.expect
    asker: threading.Thread | None = None
    try:
        up.wait_for_line("ready: quiet", timeout_s=120)
        # `tiffin up` names the page next to the admin line; the test opens it from there, as a user would.
        line = up.wait_for_line("dashboard   http", timeout_s=5)
        found = re.search(r"(http://\S+/dashboard)", line)
        assert found, line
        page = browser.new_page(viewport=WIDE)
        page.goto(found.group(1))

        # At rest: both deployments idle, no replica ready.
        expect(cell(page, "sleepy", "state")).to_have_text(re.compile(r"\bidle$"), timeout=30_000)
        expect(cell(page, "quiet", "state")).to_have_text(re.compile(r"\bidle$"))
        for field in ("api", "runner"):
            expect(cell(page, "sleepy", field)).to_have_text(re.compile(r"^0 / (0|\u2013)$"))
        expect(page.locator('[data-total="idle"] .v')).to_have_text("2")
        expect(page.locator('[data-total="warm"] .v')).to_have_text("0")
        expect(cell(page, "sleepy", "last_request")).to_have_text("none yet")
        expect(page.locator("#updated")).to_contain_text("updated")
        page.get_by_role("button", name="sleepy").click()  # the drill-down, polled with the overview
        expect(page.locator("#settings")).to_contain_text("idle period")
        expect(page.locator("#settings")).to_contain_text("3.0 s")
        shot(page, "idle-wide")

        # A request wakes it; the runner waits at the gate, so the page must show the deployment waking.
        answer: dict[str, Any] = {}
        asker = threading.Thread(target=ask, args=(up.url, up.ssl_context(), answer), daemon=True)
        asker.start()
        expect(cell(page, "sleepy", "state")).to_have_text(re.compile(r"\bwaking$"), timeout=SLOW_MS)
        expect(cell(page, "sleepy", "last_request")).to_have_text("now (busy)")
        # The request waits in the queue, or an API server's proxy already took it and waits for the runner.
        page.wait_for_function(WAITING_OR_TAKEN, arg="sleepy", timeout=30_000)
        if cell(page, "sleepy", "queued").inner_text() == "1 req":
            expect(cell(page, "sleepy", "oldest")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$|min"))
        expect(cell(page, "sleepy", "runner")).to_have_text(re.compile(r"^0 / 1$"), timeout=SLOW_MS)
        expect(page.locator('[data-total="waking"] .v')).to_have_text("1")
        expect(cell(page, "quiet", "state")).to_have_text(re.compile(r"\bidle$"))
        shot(page, "waking-wide")
        assert asker.is_alive(), "the request was answered while its runner was held at the gate"

        opener = threading.Thread(target=open_gate, args=(gate,), daemon=True)
        opener.start()
        asker.join(timeout=SLOW_MS / 1000)
        assert answer == {"status": 200, "text": "echo: wake up"}

        # Warm, with the right counts and its cold start in the chart and the table.
        expect(cell(page, "sleepy", "state")).to_have_text(re.compile(r"\bwarm$"), timeout=SLOW_MS)
        expect(cell(page, "sleepy", "api")).to_have_text("1 / 1")
        expect(cell(page, "sleepy", "runner")).to_have_text("1 / 1")
        expect(cell(page, "sleepy", "queued")).to_have_text("0 req")
        expect(cell(page, "sleepy", "cold")).to_have_text(re.compile(r"^\d.*(ms|s), .* ago$"))
        expect(page.locator('[data-total="warm"] .v')).to_have_text("1")
        expect(page.locator('[data-total="runner_ready"] .v')).to_have_text("1")
        expect(page.locator("#chart-coldstarts g.cold-start")).to_have_count(1)
        expect(page.locator('#chart-coldstarts [data-field="cold-stats"]')).to_contain_text("1 cold start")
        expect(page.locator("#coldstarts tbody tr")).to_have_count(1)
        expect(page.locator("#coldstarts")).to_contain_text("\u2713 ok")
        expect(page.locator("#replicas tbody tr")).to_have_count(2)
        expect(page.locator("#replicas")).to_contain_text("API server")
        expect(page.locator("#replicas")).to_contain_text("runner")
        for _ in range(3):  # warm traffic: answered at once, and the last request is now recent
            warm: dict[str, Any] = {}
            ask(up.url, up.ssl_context(), warm)
            assert warm == {"status": 200, "text": "echo: wake up"}
        expect(cell(page, "sleepy", "last_request")).to_have_text(re.compile(r"^(\d+ ms|\d\.\d s) ago$|busy"))
        expect(page.locator("#chart-coldstarts g.cold-start")).to_have_count(1)  # warm requests are no cold start
        shot(page, "warm-wide")
        page.set_viewport_size(NARROW)
        expect(cell(page, "sleepy", "state")).to_be_visible()
        shot(page, "warm-narrow")
        # Narrow means readable: no part of the page needs scrolling sideways.
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        page.set_viewport_size(WIDE)

        # After the idle period (3 s), back to idle with no replica.
        expect(cell(page, "sleepy", "state")).to_have_text(re.compile(r"\bidle$"), timeout=SLOW_MS)
        expect(cell(page, "sleepy", "api")).to_have_text("0 / 0", timeout=SLOW_MS)
        expect(cell(page, "sleepy", "runner")).to_have_text("0 / 0", timeout=SLOW_MS)
        expect(cell(page, "sleepy", "last_request")).to_have_text(re.compile(r" ago$"))
        expect(page.locator('[data-total="idle"] .v')).to_have_text("2")
        # The cold start stays in the last hour's chart after the replicas are gone.
        expect(page.locator("#chart-coldstarts g.cold-start")).to_have_count(1)
        expect(page.locator("#banner")).to_be_hidden()
        shot(page, "idle-again-wide")
    finally:
        if asker is not None and asker.is_alive():
            threading.Thread(target=open_gate, args=(gate,), daemon=True).start()  # never leave the runner held
        assert up.proc.stop(timeout_s=180) == 0


def test_behind_a_token_the_page_asks_for_it_and_marks_lost_contact(
    browser: Any, stack_factory: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    stack: Stack = stack_factory([write_deployment(tmp_path, "guarded")])
    stack.start_interceptor(TIFFIN_ADMIN_TOKEN_FILE=str(token_file))
    page = browser.new_page(viewport=NARROW)
    expect = playwright_api.expect

    # The page itself loads without the token, then asks for it: nothing of the data shows before.
    page.goto(f"http://127.0.0.1:{stack.admin_port}/dashboard")
    expect(page.locator("#token-form")).to_be_visible(timeout=30_000)
    expect(page.locator("#content")).to_be_hidden()
    page.fill("#token-input", "not-the-token-not-the-token")
    page.click("#token-form button")
    expect(page.locator("#updated")).to_contain_text("that token was refused", timeout=30_000)
    expect(page.locator("#token-form")).to_be_visible()

    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    expect(cell(page, "guarded", "state")).to_have_text(re.compile(r"\bidle$"), timeout=30_000)
    expect(page.locator("#token-form")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('tiffin.adminToken')") == TOKEN
    expect(page.locator("#banner")).to_be_hidden()

    # tiffin goes away: the page says so plainly and keeps the last numbers, marked as old.
    assert stack.procs["interceptor"].stop() == 0
    expect(page.locator("#banner")).to_be_visible(timeout=30_000)
    expect(page.locator("#banner")).to_contain_text("Lost contact with tiffin")
    expect(page.locator("#content")).to_have_class(re.compile(r"\bstale\b"))
    expect(cell(page, "guarded", "state")).to_have_text(re.compile(r"\bidle$"))
    shot(page, "lost-contact-narrow")

    # Back again: the banner goes without a reload.
    stack.start_interceptor("interceptor-2", TIFFIN_ADMIN_TOKEN_FILE=str(token_file))
    expect(page.locator("#banner")).to_be_hidden(timeout=30_000)
    expect(page.locator("#content")).not_to_have_class(re.compile(r"\bstale\b"))

    # tiffin answers but its Redis is gone: the banner says that, not just "no answer".
    stack.redis.stop()
    expect(page.locator("#banner")).to_contain_text("redis is unreachable", timeout=30_000)


def test_fifty_deployments_stay_readable_wide_narrow_and_dark(browser: Any, stack_factory: Any, tmp_path: Path) -> None:
    names = [f"model-{i:02d}" for i in range(50)]
    stack: Stack = stack_factory([write_deployment(tmp_path, name) for name in names])
    stack.start_interceptor()
    expect = playwright_api.expect
    page = browser.new_page(viewport=WIDE, color_scheme="dark")
    page.goto(f"http://127.0.0.1:{stack.admin_port}/dashboard")

    rows = page.locator("#rows tr")
    expect(rows).to_have_count(50, timeout=30_000)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.name)") == names  # config order
    expect(page.locator('[data-total="deployments"] .v')).to_have_text("50")
    expect(page.locator('[data-total="idle"] .v')).to_have_text("50")
    # Compact: one line per deployment, so fifty fit in a few screens.
    assert max(rows.evaluate_all("rows => rows.map(r => r.getBoundingClientRect().height)")) <= 40
    # Dark mode follows the system: a dark background under light text.
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert _luminance(background) < 0.2, background
    shot(page, "fifty-dark-wide")

    page.fill("#filter", "model-07")
    expect(page.locator("#rows tr:visible")).to_have_count(1)
    expect(page.locator("#shown")).to_have_text("1 of 50 deployments")
    page.fill("#filter", "warm")  # by state: none is warm
    expect(page.locator("#rows tr:visible")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    page.fill("#filter", "")
    expect(page.locator("#rows tr:visible")).to_have_count(50)

    page.set_viewport_size(NARROW)
    expect(cell(page, "model-00", "state")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    shot(page, "fifty-dark-narrow")


def _luminance(css_rgb: str) -> float:
    """Relative brightness (0 black .. 1 white) of a computed `rgb(r, g, b)` colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_rgb)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
