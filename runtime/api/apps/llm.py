"""`self.llm` of an application: chat and completion calls to the deployment's runners, through the balancer.

Every call takes a lease from the API server's balancer like a forwarded OpenAI request, so the runner load
reports (and so runner scaling) count application calls too, and a call waits for a runner (at zero: for its
cold start) until the request's own wait deadline.
"""

from __future__ import annotations

import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from runtime.api.balancer import Balancer, Lease
from tiffin.app import LLMError, Messages

log = structlog.get_logger("runtime.api.apps")

_CONNECT_RETRIES = 10
"""Refused connections tolerated per call: nothing reached an engine, so trying another runner is free."""


@dataclass
class Call:
    """The request an application is serving: its id, its wait deadline, whether a runner was reached."""

    request_id: str
    deadline: float
    """On the time.monotonic() clock."""
    leased: bool = False
    """A call got a runner slot: from then on the request may have run at an engine (never hand it back)."""


CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tiffin_app_call", default=None)
"""Set by the endpoint handler; the application's calls (in the same task) read it."""


class RunnerLLM:
    """The `tiffin.app.LLM` the API server gives an application."""

    def __init__(
        self,
        balancer: Callable[[], Balancer],
        http: Callable[[], aiohttp.ClientSession],
        model: str,
        wait_timeout_s: float,
    ) -> None:
        # Getters: the balancer and session open with the app, after the application is mounted.
        self._balancer = balancer
        self._http = http
        self.model = model
        self.wait_timeout_s = wait_timeout_s

    async def chat(self, messages: Messages, **options: Any) -> str:
        """The assistant's reply to `messages`."""
        answer = await self._whole("/v1/chat/completions", {"messages": _messages(messages), **options})
        return str(answer["choices"][0]["message"].get("content") or "")

    async def stream_chat(self, messages: Messages, **options: Any) -> AsyncIterator[str]:
        """The reply piece by piece."""
        body = {"messages": _messages(messages), **options}
        async for event in self._stream("/v1/chat/completions", body):
            piece = (event["choices"][0].get("delta") or {}).get("content") if event.get("choices") else None
            if piece:
                yield piece

    async def complete(self, prompt: str, **options: Any) -> str:
        """The text that follows `prompt`."""
        answer = await self._whole("/v1/completions", {"prompt": prompt, **options})
        return str(answer["choices"][0].get("text") or "")

    async def stream_complete(self, prompt: str, **options: Any) -> AsyncIterator[str]:
        """The text that follows `prompt`, piece by piece."""
        async for event in self._stream("/v1/completions", {"prompt": prompt, **options}):
            piece = event["choices"][0].get("text") if event.get("choices") else None
            if piece:
                yield piece

    async def _whole(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        lease, response = await self._post(path, {**body, "model": self.model, "stream": False})
        try:
            answer: dict[str, Any] = await response.json(content_type=None)
            return answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("llm_failed_mid_answer", runner=lease.runner_id, error=str(exc) or repr(exc))
            raise LLMError(502, "the model failed while answering", code="upstream_failed") from exc
        finally:
            response.release()
            lease.release()

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        lease, response = await self._post(path, {**body, "model": self.model, "stream": True})
        try:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: ") :].strip()
                if data == b"[DONE]":
                    return
                event: dict[str, Any] = json.loads(data)
                if "error" in event or event.get("object") == "error":
                    log.warning("llm_stream_error", runner=lease.runner_id, event=event)
                    raise LLMError(502, "the model failed mid-stream", code="upstream_failed")
                yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("llm_stream_broken", runner=lease.runner_id, error=str(exc) or repr(exc))
            raise LLMError(502, "the model failed mid-stream", code="upstream_failed") from exc
        finally:
            response.release()  # a stream left early closes its connection: the engine stops generating
            lease.release()

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[Lease, aiohttp.ClientResponse]:
        """A runner's answer head (status 200), with the lease the caller releases."""
        call = CURRENT.get() or Call(uuid.uuid4().hex, time.monotonic() + self.wait_timeout_s)
        balancer = self._balancer()
        refused = 0
        while True:
            lease = await balancer.acquire(call.deadline)  # NoRunner/Draining: RequestErrors, answered as such
            call.leased = True
            try:
                response = await self._http().post(
                    lease.url + path, json=body, headers={"X-Request-Id": call.request_id}
                )
            except aiohttp.ClientConnectorError as exc:
                lease.release()
                balancer.suspect(lease.runner_id)
                log.warning("runner_unreachable", request_id=call.request_id, runner=lease.runner_id, error=str(exc))
                refused += 1
                if refused >= _CONNECT_RETRIES:
                    raise LLMError(502, "no runner could be reached", code="upstream_failed") from exc
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                lease.release()
                log.warning("runner_failed", request_id=call.request_id, runner=lease.runner_id, error=repr(exc))
                raise LLMError(502, "the model failed", code="upstream_failed") from exc
            except BaseException:
                lease.release()
                raise
            if response.status < 400:
                return lease, response
            try:
                raise await _refusal(response)
            finally:
                response.release()
                lease.release()


async def _refusal(response: aiohttp.ClientResponse) -> LLMError:
    """The engine's error as an `LLMError`: its 4xx as they are (the call was wrong), anything else as 502."""
    message, code = "the model failed", "upstream_failed"
    if 400 <= response.status < 500:
        try:
            data = await response.json(content_type=None)
            # OpenAI's shape ({"error": {...}}), or vLLM's older one ({"object": "error", "message": ...}).
            error = data["error"] if isinstance(data.get("error"), dict) else data
            message = str(error.get("message") or f"the model refused the call ({response.status})")
            code = str(error.get("code") or "invalid_request")
        except (aiohttp.ClientError, ValueError, AttributeError):
            message, code = f"the model refused the call ({response.status})", "invalid_request"
        return LLMError(response.status, message, code=code)
    log.warning("runner_error_status", status=response.status)
    return LLMError(502, message, code=code)


def _messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]
