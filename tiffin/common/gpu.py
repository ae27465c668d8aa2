"""What the machine's accelerators allow: GPU detection and vLLM's sleep mode."""

from __future__ import annotations

import subprocess


def has_gpu(nvidia_smi: str = "nvidia-smi", timeout_s: float = 10.0) -> bool:
    """True when `nvidia-smi -L` runs and lists at least one GPU."""
    try:
        done = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and any(line.startswith("GPU") for line in done.stdout.splitlines())


def sleep_mode_supported() -> bool:
    """Whether vLLM's sleep mode can run here: it needs CUDA (or ROCm/XPU, which tiffin does not detect yet).

    vLLM's CPU build refuses to start with `--enable-sleep-mode` ("Sleep mode is not supported on current
    platform"), so without a GPU the answer is no.
    """
    return has_gpu()
