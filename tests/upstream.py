"""A small OpenAI-compatible server for tests: deterministic echo replies, streamed or not, with test hooks.

    python tests/upstream.py --port P --served-model-name NAME

Replies say `echo: <last user message or prompt>`. Hooks come from the body field "tiffin_test" (an object):
    "delay_s": float     pause before each streamed chunk (once, before a non-streamed reply)
    "linger_s": float    after a stream's `data: [DONE]`, keep the response open this long before ending it
    "hold_once": KEY     the first request with KEY never answers (until its client goes away); later ones do
    "flood_bytes": int   a streamed reply then sends this many more bytes of filler events, as fast as it can
    "status": int        answer with this HTTP status and an OpenAI error body
    "key": KEY           only labels the request in /_test/arrivals
GET /_test/arrivals lists every request received ({"key", "at"}, the key of "hold_once" or "key");
GET /_test/completions lists every request answered in full ({"key", "at"}: after the last byte of a reply);
GET /_test/disconnects counts held requests (and floods) whose client went away. Every response carries
`X-Upstream-Port: P`; GET /health also says the pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

from aiohttp import web

STATE = web.AppKey("state", dict[str, Any])


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


def _text_of(path: str, body: dict[str, Any]) -> str:
    if path.endswith("/chat/completions"):
        content: Any = ""
        for message in body.get("messages") or []:
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return f"echo: {content}"
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    return f"echo: {prompt}"


def _words(text: str) -> list[str]:
    """Pieces that join back into `text`: the first word, then each later word with its leading space."""
    parts = text.split(" ")
    return [parts[0], *(" " + p for p in parts[1:])]


def _chunk(chat: bool, rid: str, name: str, piece: str | None) -> dict[str, Any]:
    finish = "stop" if piece is None else None
    if chat:
        delta = {} if piece is None else {"role": "assistant", "content": piece}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": name, "choices": [choice]}


def _completion(chat: bool, rid: str, name: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        kind = "text_completion"
    tokens = len(text.split())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    return {"id": rid, "object": kind, "created": int(time.time()), "model": name, "choices": [choice], "usage": usage}


async def generate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    hooks = body.get("tiffin_test")
    if not isinstance(hooks, dict):
        hooks = {}
    key = hooks.get("hold_once")
    state["arrivals"].append({"key": key or hooks.get("key"), "at": time.time()})
    if key is not None and key not in state["held"]:
        state["held"].add(key)
        try:
            await asyncio.Event().wait()  # never answers; cancelled when the client goes away
        except asyncio.CancelledError:
            state["disconnects"] += 1
            raise
    if "status" in hooks:
        return _error(int(hooks["status"]), f"test status {hooks['status']}", "test_status")
    name = state["name"]
    if body.get("model") != name:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
    chat = request.path.endswith("/chat/completions")
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
    text = _text_of(request.path, body)
    delay = float(hooks.get("delay_s", 0))
    if not body.get("stream"):
        if delay:
            await asyncio.sleep(delay)
        prompt_tokens = len(json.dumps(body.get("messages", body.get("prompt", ""))).split())
        reply = web.json_response(_completion(chat, rid, name, text, prompt_tokens))
        await reply.prepare(request)
        await reply.write_eof()
        state["completions"].append({"key": key or hooks.get("key"), "at": time.time()})
        return reply
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for piece in [*_words(text), None]:
        if delay:
            await asyncio.sleep(delay)
        await resp.write(b"data: " + json.dumps(_chunk(chat, rid, name, piece)).encode() + b"\n\n")
    flood = int(hooks.get("flood_bytes", 0))
    if flood:
        await _flood(resp, state, flood)
    await resp.write(b"data: [DONE]\n\n")
    linger = float(hooks.get("linger_s", 0))
    if linger:
        await asyncio.sleep(linger)  # a server whose close lags its last event, as vLLM's can
    await resp.write_eof()
    state["completions"].append({"key": key or hooks.get("key"), "at": time.time()})
    return resp


async def _flood(resp: web.StreamResponse, state: dict[str, Any], total: int) -> None:
    """Filler events of about 8 KB each, `total` bytes in all; a client gone before the end counts as a disconnect."""
    event = b"data: " + json.dumps({"filler": "x" * 8000}).encode() + b"\n\n"
    try:
        for _ in range(total // len(event)):
            await resp.write(event)
    except (asyncio.CancelledError, ConnectionError):
        state["disconnects"] += 1
        raise


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def models(request: web.Request) -> web.Response:
    name = request.app[STATE]["name"]
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"}]})


async def arrivals(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE]["arrivals"])


async def completions(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE]["completions"])


async def disconnects(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE]["disconnects"])


def create_app(port: int, name: str) -> web.Application:
    app = web.Application()
    app[STATE] = {"name": name, "arrivals": [], "held": set(), "disconnects": 0, "completions": []}

    async def identify(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Upstream-Port"] = str(port)

    app.on_response_prepare.append(identify)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_get("/_test/arrivals", arrivals)
    app.router.add_get("/_test/completions", completions)
    app.router.add_get("/_test/disconnects", disconnects)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    # handler_cancellation: a held request learns that its client went away.
    web.run_app(
        create_app(args.port, args.served_model_name),
        host=args.host,
        port=args.port,
        handler_cancellation=True,
        print=None,
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
