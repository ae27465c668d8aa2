"""What an application's author writes: `tiffin.App`, `@tiffin.endpoint`, `tiffin.HTTPError` and the `LLM` client.

    class AdCopy(tiffin.App):
        @tiffin.endpoint
        async def generate(self, req: AdRequest) -> AdCopyOut:
            return AdCopyOut(copy=await self.llm.chat(f"Write an ad for {req.product}", max_tokens=80))

An endpoint takes one pydantic model and returns a value pydantic can serialize (a model, str, list...), or
streams: annotate the return as `AsyncIterator[T]` and `yield` items. It runs on the API server (CPU); the
model runs on the deployment's runners, reached through `self.llm`. See docs/applications.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

Messages = str | Sequence[Mapping[str, Any]]
"""A chat: a list of OpenAI messages (`{"role": "user", "content": "..."}`), or one user message as a string."""

F = TypeVar("F", bound=Callable[..., Any])

ENDPOINT_MARK = "__tiffin_endpoint__"
"""Attribute `@endpoint` sets on a method: the endpoint's options."""


class LLM(Protocol):
    """The deployment's model, as the application sees it: chat and completion calls, whole or streamed.

    `options` are the engine's sampling parameters, passed as they are (`max_tokens`, `temperature`, `top_p`,
    `top_k`, `stop`, `seed`, `repetition_penalty`, ...). Each call waits for a runner slot like any request
    (and wakes the runners if they are at zero); a refusal by the engine raises `LLMError`.
    """

    async def chat(self, messages: Messages, **options: Any) -> str:
        """The assistant's reply to `messages`."""
        ...

    def stream_chat(self, messages: Messages, **options: Any) -> AsyncIterator[str]:
        """The assistant's reply to `messages`, piece by piece as the engine produces it."""
        ...

    async def complete(self, prompt: str, **options: Any) -> str:
        """The text that follows `prompt` (no chat template)."""
        ...

    def stream_complete(self, prompt: str, **options: Any) -> AsyncIterator[str]:
        """The text that follows `prompt`, piece by piece."""
        ...


class App:
    """Base class of an application: subclass it and mark async methods with `@tiffin.endpoint`.

    One instance serves every request of an API server replica; `setup` and `close` run once around them.
    """

    llm: LLM
    """The deployment's model; set by the API server before `setup` runs."""

    async def setup(self) -> None:
        """Load what the endpoints need once (a tokenizer, templates); runs before the first request."""

    async def close(self) -> None:
        """Release what `setup` took; runs when the API server stops."""


def endpoint(fn: F | None = None, *, name: str | None = None, summary: str | None = None) -> Any:
    """Mark an async method of an `App` as an endpoint at `.../v1/apps/{deployment}/{name}` (default: its name).

    Usable bare (`@tiffin.endpoint`) or with options (`@tiffin.endpoint(name="copy", summary="...")`).
    """

    def mark(method: F) -> F:
        setattr(method, ENDPOINT_MARK, {"name": name or method.__name__, "summary": summary})
        return method

    return mark(fn) if fn is not None else mark


class HTTPError(Exception):
    """Raise in an endpoint to answer with this status and message (e.g. 404 for an unknown product).

    The client gets an OpenAI-shaped error body: `{"error": {"message", "type", "param", "code"}}`.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 400-599, got {status}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class LLMError(HTTPError):
    """The engine refused a call (e.g. 400: the prompt is longer than the model's context) or failed (502)."""
