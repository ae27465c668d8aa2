"""Message shapes on the Redis streams: request envelopes (queue) and reply frames (reply stream).

A reply is a sequence of frames for one request id: `head` (status + headers), `chunk`* (body bytes, SSE
events as they arrive), then `end`; or a single `error` at any point. Frames carry the consumer that wrote
them, so the interceptor can follow exactly one replica's answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Fields = dict[bytes, bytes]

# Request headers worth carrying to the API server; hop-by-hop and edge-only headers stay at the edge. Never
# `authorization`: API keys are checked at the edge and must not reach Redis, replicas or their logs.
FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "x-request-id", "openai-organization")
# The OpenAI endpoints that travel through the queue (the interceptor accepts them behind a route prefix).
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
# Set by the proxy on requests to its API server: the epoch-ms until which the request may wait for a runner.
WAIT_DEADLINE_HEADER = "X-Tiffin-Wait-Deadline-Ms"
# Set by the proxy on the head frame: how long the request waited in the queue before a replica took it.
QUEUE_MS_HEADER = "x-tiffin-queue-ms"
# Set by the interceptor on replies to requests that found the deployment cold: how long they waited (ms).
COLD_START_HEADER = "x-tiffin-cold-start-ms"
# Set by the interceptor on the reply to the request that woke the deployment: each cold-start phase seen, in ms
# since the request arrived (`activated=40;replica_started=300;...;first_byte=6200`).
COLD_START_PHASES_HEADER = "x-tiffin-cold-start-phases"
# API server -> proxy, on an error reply: the request reached no runner and should be served by another
# replica (value: why, e.g. "draining"). The proxy puts it back in the queue instead of relaying the error.
NOT_SERVED_HEADER = "X-Tiffin-Not-Served"
# The most body bytes one chunk frame carries: a reply that arrives faster is split, so one read of a reply stream
# (a bounded number of frames) holds a bounded number of bytes at the interceptor.
CHUNK_MAX_BYTES = 65_536
# Response headers worth carrying back to the client.
REPLY_HEADERS = ("content-type", "cache-control", QUEUE_MS_HEADER)


def _s(fields: Fields, name: str) -> str:
    return fields[name.encode()].decode()


@dataclass(frozen=True)
class Envelope:
    """A request waiting in a deployment queue."""

    request_id: str
    reply_to: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    enqueued_ms: int = 0
    wait_deadline_ms: int = 0
    upstream_timeout_s: float = 300.0

    def to_fields(self) -> dict[str, str | bytes]:
        return {
            "rid": self.request_id,
            "reply_to": self.reply_to,
            "path": self.path,
            "body": self.body,
            "headers": json.dumps(self.headers),
            "enqueued_ms": str(self.enqueued_ms),
            "wait_deadline_ms": str(self.wait_deadline_ms),
            "upstream_timeout_s": repr(self.upstream_timeout_s),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> Envelope:
        return cls(
            request_id=_s(fields, "rid"),
            reply_to=_s(fields, "reply_to"),
            path=_s(fields, "path"),
            body=fields[b"body"],
            headers=json.loads(fields[b"headers"]),
            enqueued_ms=int(fields[b"enqueued_ms"]),
            wait_deadline_ms=int(fields[b"wait_deadline_ms"]),
            upstream_timeout_s=float(fields[b"upstream_timeout_s"]),
        )


class FrameKind(StrEnum):
    HEAD = "head"
    CHUNK = "chunk"
    END = "end"
    ERROR = "error"


@dataclass(frozen=True)
class Frame:
    """One piece of a reply, addressed to a request id on its interceptor's reply stream."""

    request_id: str
    kind: FrameKind
    by: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    error: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    """A chunk's place in its reply (1, 2, ...; 0: unnumbered). A frame's XADD can be sent twice (a client
    retries a command whose reply it lost while Redis ran it anyway), so the reader drops a chunk it has seen."""

    @classmethod
    def head(cls, request_id: str, by: str, status: int, headers: dict[str, str]) -> Frame:
        return cls(request_id, FrameKind.HEAD, by, status=status, headers=headers)

    @classmethod
    def chunk(cls, request_id: str, by: str, data: bytes, seq: int = 0) -> Frame:
        return cls(request_id, FrameKind.CHUNK, by, data=data, seq=seq)

    @classmethod
    def end(cls, request_id: str, by: str) -> Frame:
        return cls(request_id, FrameKind.END, by)

    @classmethod
    def fail(cls, request_id: str, by: str, status: int, message: str, code: str) -> Frame:
        """An error in place of (or cutting short) a reply; `status` matters only before a head."""
        return cls(request_id, FrameKind.ERROR, by, status=status, error={"message": message, "code": code})

    def to_fields(self) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {"rid": self.request_id, "kind": self.kind.value, "by": self.by}
        if self.kind is FrameKind.HEAD:
            out["status"] = str(self.status)
            out["headers"] = json.dumps(self.headers)
        elif self.kind is FrameKind.CHUNK:
            out["data"] = self.data
            if self.seq:
                out["seq"] = str(self.seq)
        elif self.kind is FrameKind.ERROR:
            out["status"] = str(self.status)
            out["error"] = json.dumps(self.error)
        return out

    @classmethod
    def from_fields(cls, fields: Fields) -> Frame:
        kind = FrameKind(_s(fields, "kind"))
        return cls(
            request_id=_s(fields, "rid"),
            kind=kind,
            by=_s(fields, "by"),
            status=int(fields.get(b"status", b"0")),
            headers=json.loads(fields[b"headers"]) if b"headers" in fields else {},
            data=fields.get(b"data", b""),
            error=json.loads(fields[b"error"]) if b"error" in fields else {},
            seq=int(fields.get(b"seq", b"0")),
        )
