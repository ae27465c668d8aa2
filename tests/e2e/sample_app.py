"""A test application (copied next to the test's YAML, as a user's file would be): one endpoint per behaviour.

The runner is tests/upstream.py, which answers `echo: <last user message>`; `tiffin_test` hooks reach it as
sampling options.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

import tiffin


class Greeting(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    times: int = Field(1, ge=1, le=5)
    tiffin_test: dict[str, Any] | None = None


class Reply(BaseModel):
    text: str
    length: int


class Greeter(tiffin.App):
    """Greets people, through the model."""

    async def setup(self) -> None:
        self.salutation = "Hello"  # endpoints see what setup prepared

    def _options(self, req: Greeting) -> dict[str, Any]:
        return {"max_tokens": 20, **({"tiffin_test": req.tiffin_test} if req.tiffin_test else {})}

    @tiffin.endpoint
    async def greet(self, req: Greeting) -> Reply:
        """Greet, shaped: upper case, with the length."""
        text = " ".join([await self.llm.chat(f"{self.salutation} {req.name}", **self._options(req))] * req.times)
        return Reply(text=text.upper(), length=len(text))

    @tiffin.endpoint(name="complete-it")
    async def complete_it(self, req: Greeting) -> str:
        return await self.llm.complete(f"Dear {req.name}", max_tokens=5)

    @tiffin.endpoint
    async def words(self, req: Greeting) -> AsyncIterator[str]:
        """The greeting, streamed."""
        async for piece in self.llm.stream_chat(f"{self.salutation} {req.name}", **self._options(req)):
            yield piece

    @tiffin.endpoint
    async def refuse(self, req: Greeting) -> Reply:
        raise tiffin.HTTPError(409, f"{req.name} is taken", code="name_taken", param="name")

    @tiffin.endpoint
    async def crash(self, req: Greeting) -> Reply:
        raise RuntimeError("secret internal detail at /srv/greeter")

    @tiffin.endpoint
    async def crash_mid_stream(self, req: Greeting) -> AsyncIterator[str]:
        yield "first"
        raise RuntimeError("secret internal detail mid-stream")

    @tiffin.endpoint
    async def engine_refusal(self, req: Greeting) -> str:
        return await self.llm.chat("anything", tiffin_test={"status": 400})
