"""`tiffin.Client` and `tiffin.AsyncClient`: call an application's endpoints by name, whole or streamed.

    client = tiffin.Client("https://127.0.0.1:8080/v1/apps/adcopy", api_key=KEY, verify=".state/tls/ca.pem")
    client.call("generate", industry="coffee", product="Bean There", keywords=["fresh"])   # -> the JSON answer
    for piece in client.stream("stream", industry="coffee", product="Bean There"):        # -> each item
        print(piece, end="")

Both on httpx: the sync client for scripts and notebooks (what most callers of a model write), the async
one for servers that call tiffin from their own event loop; the same methods, the same errors.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

DEFAULT_TIMEOUT_S = 600.0
"""A first request may wait for a cold start (minutes for a large model), then for the whole answer."""


class APIError(Exception):
    """An error answer (`status`, and OpenAI's `message`, `type`, `code`, `param`), or an error event mid-stream."""

    def __init__(self, status: int, error: Mapping[str, Any], request_id: str | None = None) -> None:
        self.status = status
        self.message = str(error.get("message") or f"HTTP {status}")
        self.type = error.get("type")
        self.code = error.get("code")
        self.param = error.get("param")
        self.request_id = request_id
        super().__init__(
            f"{status} {self.code or self.type}: {self.message}" + (f" (param: {self.param})" if self.param else "")
        )


def _verify(verify: bool | str | Path | ssl.SSLContext) -> bool | ssl.SSLContext:
    # A CA file (tiffin up's .state/tls/ca.pem) as a path; True: the system's trust store.
    if isinstance(verify, str | Path):
        return ssl.create_default_context(cafile=str(verify))
    return verify


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _payload(payload: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    return {**(payload or {}), **fields}


def _raise_for(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {"message": body.decode(errors="replace")[:500]}
    raise APIError(response.status_code, error, response.headers.get("x-request-id"))


def _event(line: str, request_id: str | None) -> tuple[bool, Any]:
    """(done, item) for one SSE line; `item` is None for lines that carry none."""
    if not line.startswith("data: "):
        return False, None
    data = line[len("data: ") :]
    if data == "[DONE]":
        return True, None
    item = json.loads(data)
    if isinstance(item, dict) and isinstance(item.get("error"), dict):
        raise APIError(200, item["error"], request_id)  # the stream's head said 200; then it failed
    return False, item


class Client:
    """Calls the endpoints of one application, at `url` (`https://HOST:PORT[/prefix]/v1/apps/DEPLOYMENT`)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        verify: bool | str | Path | ssl.SSLContext = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(headers=_headers(api_key), verify=_verify(verify), timeout=timeout_s)

    def call(self, endpoint: str, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> Any:
        """POST to `endpoint` with `payload` and/or keyword fields; the JSON answer. Raises `APIError`."""
        response = self._http.post(f"{self.url}/{endpoint}", json=_payload(payload, fields))
        _raise_for(response, response.content)
        return response.json()

    def stream(self, endpoint: str, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> Iterator[Any]:
        """POST to a streaming `endpoint`; each item as it arrives. Raises `APIError` (also mid-stream)."""
        with self._http.stream("POST", f"{self.url}/{endpoint}", json=_payload(payload, fields)) as response:
            if response.status_code >= 400:
                _raise_for(response, response.read())
            rid = response.headers.get("x-request-id")
            for line in response.iter_lines():
                done, item = _event(line, rid)
                if done:
                    return
                if item is not None:
                    yield item

    def openapi(self) -> dict[str, Any]:
        """The application's OpenAPI description."""
        response = self._http.get(f"{self.url}/openapi.json")
        _raise_for(response, response.content)
        document: dict[str, Any] = response.json()
        return document

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited (`stream` is an async iterator)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        verify: bool | str | Path | ssl.SSLContext = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(headers=_headers(api_key), verify=_verify(verify), timeout=timeout_s)

    async def call(self, endpoint: str, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> Any:
        """POST to `endpoint`; the JSON answer. Raises `APIError`."""
        response = await self._http.post(f"{self.url}/{endpoint}", json=_payload(payload, fields))
        _raise_for(response, response.content)
        return response.json()

    async def stream(
        self, endpoint: str, payload: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AsyncIterator[Any]:
        """POST to a streaming `endpoint`; each item as it arrives. Raises `APIError` (also mid-stream)."""
        async with self._http.stream("POST", f"{self.url}/{endpoint}", json=_payload(payload, fields)) as response:
            if response.status_code >= 400:
                _raise_for(response, await response.aread())
            rid = response.headers.get("x-request-id")
            async for line in response.aiter_lines():
                done, item = _event(line, rid)
                if done:
                    return
                if item is not None:
                    yield item

    async def openapi(self) -> dict[str, Any]:
        """The application's OpenAPI description."""
        response = await self._http.get(f"{self.url}/openapi.json")
        _raise_for(response, response.content)
        document: dict[str, Any] = response.json()
        return document

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
