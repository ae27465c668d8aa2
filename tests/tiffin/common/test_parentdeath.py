"""The parent-death signal: a child started with the hook dies with its parent, whatever kills the parent."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

from tests.procs import ROOT
from tiffin.common.parentdeath import with_parent_death

# The middle process: starts a long sleeper with the hook, says its pid, then waits to be killed.
MIDDLE = """
import signal, subprocess, sys, time
from tiffin.common.parentdeath import with_parent_death
argv = with_parent_death([sys.executable, "-c", "import time; time.sleep(600)"], getattr(signal, sys.argv[1]))
child = subprocess.Popen(argv, start_new_session=True)
print(child.pid, flush=True)
sys.stdin.read()
"""


def _gone_within(pid: int, timeout_s: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])  # readable once the process has exited
    finally:
        os.close(fd)


@contextlib.contextmanager
def _middle(sig: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The middle process and the pid of the child it started; the child is killed at the end whatever happens."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", MIDDLE, sig], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT) as middle:  # fmt: skip
        assert middle.stdout is not None
        child = int(middle.stdout.readline())
        try:
            yield middle, child
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            middle.kill()


def test_a_child_in_its_own_session_dies_when_its_parent_is_killed() -> None:
    with _middle("SIGKILL") as (middle, child):
        assert not _gone_within(child, 0.2)
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        assert _gone_within(child, 30), "the child outlived its SIGKILLed parent"


def test_the_signal_can_be_a_gentle_one() -> None:
    with _middle("SIGTERM") as (middle, child):
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        assert _gone_within(child, 30)


def test_a_parent_that_exits_normally_takes_the_child_too() -> None:
    with _middle("SIGKILL") as (middle, child):
        assert middle.stdin is not None
        middle.stdin.close()  # the middle process reads EOF and exits by itself
        middle.wait(30)
        assert _gone_within(child, 30)


def test_the_launcher_runs_the_program_itself_in_the_same_process() -> None:
    argv = with_parent_death([sys.executable, "-c", "import os, sys; print(os.getpid(), sys.argv[1:])", "a b", "c"])
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.split(" ", 1) == [str(proc.pid), "['a b', 'c']\n"]  # exec'd in place: same pid, arguments intact
