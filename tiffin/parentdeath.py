"""Children die with their parent: Linux's parent-death signal, asked for between fork and exec.

Whatever ends `tiffin up` (SIGKILL, the OOM killer, a closed terminal), the kernel then signals each child it
started; the setting survives exec, so it works for any program (redis-server, vLLM). Linux sends it when the
*thread* that forked the child ends, so spawn children from a thread that lives as long as the parent (the event
loop's), never from a short-lived worker thread. Elsewhere than Linux the hook is None and nothing is asked.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def parent_death_hook(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` asking the kernel to send `sig` to the child when its parent dies; None if unsupported."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: then the signal is never sent, so send it now.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return hook
