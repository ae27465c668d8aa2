"""Model resolution: the built-in SmolLM2 converted from its GGUF package, and local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiffin.common.models import resolve_model
from tiffin.contracts.exceptions import ModelError


def test_smollm2_is_converted_once_into_a_servable_folder(smollm2_cache: Path) -> None:
    again = resolve_model("smollm2", smollm2_cache)
    assert not again.converted  # the session fixture converted it; the cache is reused
    files = {p.name for p in again.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    config = json.loads((again.path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (again.path / "model.safetensors").stat().st_size > 400_000_000  # float32, dequantized
    generation = json.loads((again.path / "generation_config.json").read_text())
    assert generation["temperature"] == 0.2 and generation["top_p"] == 0.9  # the model card's defaults


def test_converted_smollm2_loads_and_speaks_chatml(smollm2_cache: Path) -> None:
    from transformers import AutoTokenizer

    path = resolve_model("smollm2", smollm2_cache).path
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in prompt
    assert tokenizer.decode(tokenizer.encode("Paris")).strip() == "Paris"


def test_a_local_folder_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    resolved = resolve_model(str(tmp_path))
    assert resolved.path == tmp_path.resolve() and not resolved.converted


def test_missing_or_wrong_folders_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "absent"))
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
