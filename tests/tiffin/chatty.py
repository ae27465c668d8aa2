"""A child that writes CHATTY_LINES lines of output, then 'done', then waits to be stopped."""

from __future__ import annotations

import os
import signal
import sys

for n in range(int(os.environ.get("CHATTY_LINES", "1000"))):
    sys.stdout.write(f"line {n:08d} " + "x" * 80 + "\n")
sys.stdout.write("done\n")
sys.stdout.flush()
signal.sigwait({signal.SIGTERM})
