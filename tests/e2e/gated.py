"""Runs a command only once the test opens a gate: `python gated.py FIFO -- COMMAND...`.

The gate is a named pipe: opening it for reading blocks until the test opens it for writing, so a runner
started with this in front of its command cannot become ready before the test says so (no timing luck).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    gate, sep, *command = sys.argv[1:]
    assert sep == "--" and command, "usage: gated.py FIFO -- COMMAND..."
    with open(gate, "rb") as fifo:
        fifo.read()  # returns when the test's writer closes its end
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
