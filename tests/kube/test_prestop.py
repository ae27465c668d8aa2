"""The API container's preStop hook, run for real: it holds the API server back while a proxy process lives.

Each run gets a PID namespace of its own (as the pod has), so proxies of other tests on this machine are not
seen; where `unshare` is not permitted the tests skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.test_render import EXAMPLES, by_kind, containers, rendered

# Inside the namespace: start a stand-in proxy, check the hook waits for it, let it exit, see the hook return.
_DRIVER = """
import subprocess, sys
hook, folder = sys.argv[1], sys.argv[2]
proxy = subprocess.Popen([sys.executable, "-m", "proxy"], cwd=folder, stdin=subprocess.PIPE)
waiter = subprocess.Popen([sys.executable, "-c", hook])
try:
    waiter.wait(timeout=3)
    sys.exit("the hook returned while the proxy was still running")
except subprocess.TimeoutExpired:
    pass
proxy.stdin.close()  # the proxy finishes draining and exits
if proxy.wait(timeout=30) != 0:
    sys.exit("the stand-in proxy failed")
sys.exit(waiter.wait(timeout=30))
"""


def hook() -> str:
    api = containers(by_kind(rendered(EXAMPLES[0]), "Deployment", "smollm2-api"))["api"]
    command: list[str] = api["lifecycle"]["preStop"]["exec"]["command"]
    return command[2]


def in_own_pid_namespace(*argv: str) -> subprocess.CompletedProcess[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    prefix = [unshare, "--pid", "--fork", "--mount-proc"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120)


def test_hook_waits_for_the_proxy_process_and_returns_when_it_exits(tmp_path: Path) -> None:
    # A stand-in started as the pod starts the proxy (`python3 -m proxy`); it exits when its stdin closes.
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "__init__.py").write_text("")
    (tmp_path / "proxy" / "__main__.py").write_text("import sys\nsys.stdin.read()\n")

    done = in_own_pid_namespace(sys.executable, "-c", _DRIVER, hook(), str(tmp_path))

    assert done.returncode == 0, done.stderr


def test_hook_returns_at_once_without_a_proxy() -> None:
    done = in_own_pid_namespace(sys.executable, "-c", hook())
    assert done.returncode == 0, done.stderr
