"""A deliberately dumb HTTP/1.x client over a raw socket, for clients that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 15.0


@dataclass
class RawReply:
    status: int
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_reply(reader: asyncio.StreamReader, timeout_s: float = TIMEOUT_S) -> RawReply:
    """Read one response: by Content-Length, chunked framing, or until the connection closes."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 100 "):  # an interim answer to `Expect: 100-continue`
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[:2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await reader.read()
    return RawReply(int(status), version, headers, body)


async def exchange(port: int, data: bytes, timeout_s: float = TIMEOUT_S) -> RawReply:
    """Send `data` on a fresh connection and read one response."""
    reader, writer = await open_raw(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_reply(reader, timeout_s)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = TIMEOUT_S) -> bytes:
    """Everything the server still sends until it closes the connection (raises TimeoutError if it never does)."""
    async with asyncio.timeout(timeout_s):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def request(
    method: str = "GET",
    path: str = "/v1/models",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request's bytes; Host and (with a body) Content-Length are added unless given."""
    all_headers = {"Host": "127.0.0.1", **(headers or {})}
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in all_headers):
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
    return head.encode("latin-1") + body
