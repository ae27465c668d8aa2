"""Advertising copy from an industry, a product name and keywords: a tiffin application in one file.

`tiffin up examples/adcopy/adcopy.yaml` serves it beside the model's OpenAI endpoints:
    POST /v1/apps/adcopy/generate   {"industry": "coffee", "product": "Bean There", "keywords": ["fresh"]}
    POST /v1/apps/adcopy/stream     the same body; the copy streams as server-sent events
    GET  /v1/apps/adcopy/docs       the interactive docs page
The API server fills the prompt template and shapes the answer (on CPU); the runner only runs the model.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, Field

import tiffin

# Claims an ad may not make: asked for one, the endpoint refuses with a 400 naming the keyword.
FORBIDDEN_CLAIMS = ("cure", "guaranteed", "risk-free", "miracle")

SYSTEM = "You are a copywriter. You write short, vivid advertising copy. You never invent prices or awards."
TEMPLATE = """Write a {tone} advertisement for {product}, a product in the {industry} industry.
Use these keywords: {keywords}.
Start with a one-line headline, then write at most {max_words} words of body copy."""


class AdRequest(BaseModel):
    """What the copy is for."""

    industry: str = Field(min_length=2, max_length=60, examples=["specialty coffee"])
    product: str = Field(min_length=1, max_length=80, examples=["Bean There Cold Brew"])
    keywords: list[str] = Field(default_factory=list, max_length=8, examples=[["smooth", "fresh", "organic"]])
    tone: Literal["friendly", "playful", "premium", "urgent"] = "friendly"
    max_words: int = Field(60, ge=10, le=200, description="Longest body copy, in words.")


class AdCopyOut(BaseModel):
    """The copy, split into headline and body, with the keywords it managed to use."""

    headline: str
    body: str
    keywords_used: list[str]


class AdCopy(tiffin.App):
    """Advertising copy generator: industry, product name and keywords in; headline and body out."""

    @tiffin.endpoint
    async def generate(self, req: AdRequest) -> AdCopyOut:
        """Write the whole ad, then split it into headline and body."""
        text = await self.llm.chat(_messages(req), **_sampling(req))
        return _shape(text, req)

    @tiffin.endpoint
    async def stream(self, req: AdRequest) -> AsyncIterator[str]:
        """Write the ad, streamed piece by piece as the model produces it."""
        messages, sampling = _messages(req), _sampling(req)  # checked before the first piece: a clean 400
        async for piece in self.llm.stream_chat(messages, **sampling):
            yield piece


def _messages(req: AdRequest) -> list[dict[str, str]]:
    for index, keyword in enumerate(req.keywords):
        if any(claim in keyword.lower() for claim in FORBIDDEN_CLAIMS):
            raise tiffin.HTTPError(
                400, f"keyword {keyword!r} makes a claim ads may not make", code="claim_not_allowed",
                param=f"keywords.{index}",
            )  # fmt: skip
    prompt = TEMPLATE.format(
        tone=req.tone, product=req.product, industry=req.industry,
        keywords=", ".join(req.keywords) or "(none)", max_words=req.max_words,
    )  # fmt: skip
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def _sampling(req: AdRequest) -> dict[str, float | int]:
    # About 1.5 tokens a word, plus the headline; a little randomness keeps two ads for one product apart.
    return {"max_tokens": int(req.max_words * 1.5) + 24, "temperature": 0.7, "top_p": 0.9}


def _shape(text: str, req: AdRequest) -> AdCopyOut:
    """Post-processing: the first line is the headline (without 'Headline:' or quotes), and it names the product."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    headline = re.sub(r"^(\*\*)?headline:?(\*\*)?\s*", "", lines[0], flags=re.I).strip("\"'* ") if lines else ""
    if req.product.lower() not in headline.lower():
        headline = f"{req.product}: {headline}" if headline else req.product
    body = " ".join(lines[1:]).split()
    used = [k for k in req.keywords if k.lower() in text.lower()]
    return AdCopyOut(headline=headline, body=" ".join(body[: req.max_words]), keywords_used=used)
