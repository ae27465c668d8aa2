"""Children die with their parent: Linux's parent-death signal (prctl PR_SET_PDEATHSIG).

Whatever ends `tiffin up` (SIGKILL, the OOM killer, a closed terminal), the kernel then signals each child it
started. The setting survives exec, so it works for any program (redis-server, vLLM). It is set by a tiny
launcher that the child runs first (`python -S -c ...`, which sets it and execs the real program in the same
process) rather than by a `preexec_fn`: a preexec_fn makes Python fork() instead of vfork(), and gRPC's fork
handlers in `tiffin up` (its scaler client) then abort some children. Linux sends the signal when the *thread*
that started the child ends, so start children from a thread that lives as long as the parent (the event
loop's), never from a short-lived worker thread. Elsewhere than Linux the command is left as it is.
"""

from __future__ import annotations

import os
import signal
import sys

# argv: parent pid, signal number, program, args... Imports only what the interpreter has built in: it runs
# before every child, so it must be quick (-S: no site-packages) and must not depend on where tiffin is.
_LAUNCHER = """
import ctypes, os, sys
parent, sig = int(sys.argv[1]), int(sys.argv[2])
if ctypes.CDLL(None, use_errno=True).prctl(1, sig) != 0:
    sys.exit("tiffin: cannot ask for a parent-death signal: errno %d" % ctypes.get_errno())
if os.getppid() != parent:  # the parent died before prctl: the signal would never come
    os.kill(os.getpid(), sig)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def supported() -> bool:
    """Whether this system has Linux's parent-death signal."""
    return sys.platform.startswith("linux")


def with_parent_death(argv: list[str], sig: int = signal.SIGKILL) -> list[str]:
    """`argv` run so that it gets `sig` when this process (more exactly, the calling thread) dies."""
    if not supported():
        return list(argv)
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), str(int(sig)), *argv]
