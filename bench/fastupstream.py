"""A trivial OpenAI-compatible upstream that costs almost nothing: the same one behind every gateway in peers.py.

    python bench/fastupstream.py --port P [--chunks 200] [--served-model-name NAME]

HTTP/1.1 with keep-alive on a bare asyncio protocol (uvloop when installed), so a gateway in front of it, not
the upstream, is what a benchmark measures. POST /v1/chat/completions and /v1/completions answer a fixed
completion, or with `"stream": true` in the body `--chunks` SSE events then `data: [DONE]` (chunked transfer
encoding, each event written as it is made, as an engine would). GET /health and GET /v1/models answer too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast

_STREAM_MARK = b'"stream":true'
_STREAM_MARK_SPACED = b'"stream": true'


def _completion(name: str) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
    return head + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Upstream(asyncio.Protocol):
    """One keep-alive connection: parses just enough HTTP/1.1 (content-length bodies) to answer in order."""

    def __init__(self, name: str, chunks: int) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.completion = _response("200 OK", _completion(name))
        models = {"object": "list", "data": [{"id": name, "object": "model"}]}
        self.models = _response("200 OK", json.dumps(models).encode())
        event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": name,
                 "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}  # fmt: skip
        self.event = _chunked(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        self.chunks = chunks
        self.streaming = False
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(b" ", 2), body)

    def _answer(self, request_line: list[bytes], body: bytes) -> None:
        assert self.transport is not None
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else b"/"
        if method == b"GET" and path == b"/health":
            self.transport.write(_response("200 OK", b"{}"))
        elif method == b"GET" and path == b"/v1/models":
            self.transport.write(self.models)
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            if _STREAM_MARK in body or _STREAM_MARK_SPACED in body:
                asyncio.get_running_loop().create_task(self._stream())
            else:
                self.transport.write(self.completion)
        else:
            self.transport.write(_response("404 Not Found", b'{"error":{"message":"not found"}}'))

    async def _stream(self) -> None:
        # One response at a time per connection, as a client using keep-alive sends them: no pipelining.
        assert self.transport is not None
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        self.transport.write(head)
        for _ in range(self.chunks):
            self.transport.write(self.event)
            await asyncio.sleep(0)  # each event leaves as its own write, as tokens do
        self.transport.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chunks", type=int, default=200, help="SSE events per streamed response")
    parser.add_argument("--served-model-name", default="bench")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Upstream(args.served_model_name, args.chunks), args.host, args.port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
