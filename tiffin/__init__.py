"""tiffin: serverless, scale-to-zero endpoints for open-source LLMs, and applications on top of them.

What an application's author and its callers use: `App`, `endpoint`, `HTTPError`, `LLMError`, `LLM`, and the
clients `Client` and `AsyncClient` (imported on first use: the components never need httpx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tiffin.app import LLM, App, HTTPError, LLMError, endpoint

if TYPE_CHECKING:
    from tiffin.client import APIError, AsyncClient, Client

__all__ = ["LLM", "APIError", "App", "AsyncClient", "Client", "HTTPError", "LLMError", "endpoint"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "APIError"):
        from tiffin import client

        return getattr(client, name)
    raise AttributeError(f"module 'tiffin' has no attribute {name!r}")
