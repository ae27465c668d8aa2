"""Checks of deployment files against this machine and its vLLM, run by `tiffin check` and `tiffin up`.

The schema (tiffin.contracts.config) holds on any machine; these do not: vLLM's sleep mode needs a GPU, and a
`load_format` must be one the installed vLLM knows, with the package it needs installed. Each problem reads
`FILE: FIELD: PROBLEM`, as the schema's do.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from tiffin.common.gpu import sleep_mode_supported
from tiffin.contracts.config import Deployment, config_files, load_deployments

LOAD_FORMAT_PACKAGES = {
    "runai_streamer": ("runai_model_streamer", "runai-model-streamer"),
    "runai_streamer_sharded": ("runai_model_streamer", "runai-model-streamer"),
    "fastsafetensors": ("fastsafetensors", "fastsafetensors"),
    "tensorizer": ("tensorizer", "tensorizer"),
}
"""load_format -> (module it imports, package that provides it)."""


@cache
def vllm_load_formats() -> tuple[str, ...] | None:
    """The load formats the installed vLLM names (read from its source, not imported: seconds); None if unknown."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "model_executor" / "model_loader" / "__init__.py"
    try:
        found = re.search(r"LoadFormats\s*=\s*Literal\[(.*?)\]", source.read_text(), re.S)
    except OSError:
        return None
    return tuple(re.findall(r'"([^"]+)"', found.group(1))) if found else None


def _load_format_problem(dep: Deployment) -> str | None:
    args = {key.replace("-", "_"): value for key, value in dep.runner.engine_args.items()}
    fmt = args.get("load_format")
    if fmt is None or dep.runner.command:
        return None
    known = vllm_load_formats()
    if known is not None and fmt not in known:
        return f"runner.engine_args.load_format: {fmt!r} is not one the installed vLLM knows ({', '.join(known)})"
    module, package = LOAD_FORMAT_PACKAGES.get(str(fmt), (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        return f"runner.engine_args.load_format: {fmt!r} needs the {package} package, which is not installed"
    return None


def machine_problems(paths: list[Path], sleep_ok: Callable[[], bool] = sleep_mode_supported) -> list[str]:
    """What this machine cannot run in these (schema-valid) deployment files, one `FILE: FIELD: PROBLEM` each."""
    problems: list[str] = []
    for file in config_files(paths):
        for dep in load_deployments([file]):
            if dep.scaling.sleep_period_s is not None and not sleep_ok():
                problems.append(
                    f"{file}: scaling.sleep_period_s: vLLM's sleep mode needs a GPU (CUDA) and this machine has "
                    "none (nvidia-smi lists no GPU); remove the field here (runners then go straight to zero)"
                )
            load = _load_format_problem(dep)
            if load is not None:
                problems.append(f"{file}: {load}")
    return problems
