"""A process for supervisor tests: the first run says 'boom' and exits 3; later runs wait for SIGTERM."""

import os
import signal
import sys
from pathlib import Path

mark = Path(os.environ["CRASH_MARK"])
if not mark.exists():
    mark.touch()
    print("boom", flush=True)
    sys.exit(3)
signal.sigwait({signal.SIGTERM})
