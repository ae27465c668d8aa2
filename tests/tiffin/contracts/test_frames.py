"""Envelopes and frames survive the trip to Redis fields and back, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tiffin.contracts.frames import FORWARDED_HEADERS, Envelope, Fields, Frame, FrameKind

text = st.text(max_size=40)
headers = st.dictionaries(text, text, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)

envelopes = st.builds(
    Envelope,
    request_id=text,
    reply_to=text,
    path=text,
    body=st.binary(max_size=2048),
    headers=headers,
    enqueued_ms=st.integers(min_value=-(2**63), max_value=2**63),
    wait_deadline_ms=st.integers(min_value=-(2**63), max_value=2**63),
    upstream_timeout_s=st.floats(allow_nan=False),
)

frames = st.one_of(
    st.builds(Frame.head, request_id=text, by=text, status=st.integers(min_value=0, max_value=999), headers=headers),
    st.builds(Frame.chunk, request_id=text, by=text, data=st.binary(max_size=2048), seq=st.integers(0, 2**31)),
    st.builds(Frame.end, request_id=text, by=text),
    st.builds(
        Frame.fail, request_id=text, by=text, status=st.integers(min_value=0, max_value=999), message=text, code=text
    ),
    st.builds(
        Frame,
        request_id=text,
        kind=st.just(FrameKind.ERROR),
        by=text,
        status=st.integers(min_value=0, max_value=999),
        error=st.dictionaries(text, json_values, max_size=4),
    ),
)


def as_redis_fields(fields: dict[str, str | bytes]) -> Fields:
    """What Redis hands back for what was written: names and values as UTF-8 bytes."""
    return {name.encode(): value.encode() if isinstance(value, str) else value for name, value in fields.items()}


# --- in memory ---------------------------------------------------------------------------------------------


@given(envelopes)
def test_envelope_round_trips_through_its_fields(envelope: Envelope) -> None:
    assert Envelope.from_fields(as_redis_fields(envelope.to_fields())) == envelope


@given(frames)
def test_frame_round_trips_through_its_fields(frame: Frame) -> None:
    assert Frame.from_fields(as_redis_fields(frame.to_fields())) == frame


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        (Frame.head("r", "p", 200, {"content-type": "text/event-stream"}), {"rid", "kind", "by", "status", "headers"}),
        (Frame.chunk("r", "p", b"data: {}\n\n"), {"rid", "kind", "by", "data"}),
        (Frame.chunk("r", "p", b"data: {}\n\n", 3), {"rid", "kind", "by", "data", "seq"}),
        (Frame.end("r", "p"), {"rid", "kind", "by"}),
        (Frame.fail("r", "p", 502, "boom", "upstream_failed"), {"rid", "kind", "by", "status", "error"}),
    ],
    ids=["head", "chunk", "numbered-chunk", "end", "error"],
)
def test_each_frame_kind_carries_only_its_own_fields(frame: Frame, names: set[str]) -> None:
    fields = frame.to_fields()

    assert set(fields) == names
    assert fields["kind"] == frame.kind.value


def test_chunk_data_stays_bytes_and_headers_are_json() -> None:
    head = Frame.head("r", "p", 201, {"x-ü": "✓"}).to_fields()
    chunk = Frame.chunk("r", "p", b"\xff\x00\xfe").to_fields()

    assert json.loads(head["headers"]) == {"x-ü": "✓"}
    assert head["status"] == "201"
    assert chunk["data"] == b"\xff\x00\xfe"


def test_fail_frame_carries_message_and_code() -> None:
    frame = Frame.fail("r", "proxy-1", 504, "took too long", "upstream_timeout")

    assert frame.kind is FrameKind.ERROR
    assert frame.error == {"message": "took too long", "code": "upstream_timeout"}
    assert Frame.from_fields(as_redis_fields(frame.to_fields())).error == frame.error


def test_frame_with_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        Frame.from_fields({b"rid": b"r", b"kind": b"open", b"by": b"p"})


# --- through a real Redis stream ---------------------------------------------------------------------------

_redis_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


async def _xadd_xrange(redis: Redis, key: str, fields: dict[str, str | bytes]) -> Fields:
    entry_id = await redis.xadd(key, fields)  # type: ignore[arg-type]
    entries: Any = await redis.xrange(key, min=entry_id, max=entry_id)
    [(got_id, got_fields)] = entries
    assert got_id == entry_id
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in got_fields.items())
    return dict(got_fields)


@_redis_settings
@given(envelope=envelopes)
async def test_envelope_round_trips_through_a_redis_stream(redis: Redis, envelope: Envelope) -> None:
    fields = await _xadd_xrange(redis, "test:frames:envelopes", envelope.to_fields())

    assert fields[b"body"] == envelope.body
    assert Envelope.from_fields(fields) == envelope


@_redis_settings
@given(frame=frames)
async def test_frame_round_trips_through_a_redis_stream(redis: Redis, frame: Frame) -> None:
    fields = await _xadd_xrange(redis, "test:frames:frames", frame.to_fields())

    assert Frame.from_fields(fields) == frame


async def test_binary_body_survives_redis_unchanged(redis: Redis) -> None:
    body = bytes(range(256)) * 4
    envelope = Envelope("rid-1", "tiffin:reply:i", "/v1/chat/completions", body, {"content-type": "x/y"})

    fields = await _xadd_xrange(redis, "test:frames:binary", envelope.to_fields())

    assert fields[b"body"] == body
    assert Envelope.from_fields(fields).body == body


def test_the_authorization_header_never_travels_to_replicas() -> None:
    assert "authorization" not in {h.lower() for h in FORWARDED_HEADERS}
