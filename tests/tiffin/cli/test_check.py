"""`tiffin check` on the shipped examples: the README's first command in "Running it yourself" must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("folder", ["examples", "examples/adcopy"])
def test_the_examples_a_new_user_checks_are_valid(folder: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tiffin", "check", folder], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
