"""No credential reaches a log line, whatever quotes it."""

from __future__ import annotations

import io
import logging

import pytest

from tiffin.common.redact import RedactingFilter, redact, redact_processor

KEY = "tfn_0123456789ab_" + "s3cr3t-_" * 5 + "abc"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {KEY}",
        f"b'Authorization: Bearer {KEY}\\x01bad'",
        f"Got more than 8190 bytes when reading: b'Bearer {KEY}xxxx...'",
        f'{{"authorization": "Bearer {KEY}"}}',
        f"bearer\t{KEY}",
        f"key {KEY} here",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Bearer sk-proj-abcdef",
    ],
)
def test_credentials_are_redacted_wherever_they_appear(text: str) -> None:
    out = redact(text)
    assert "s3cr3t" not in out and "dXNlcjpwYXNzd29yZA" not in out and "sk-proj" not in out, out
    assert "[redacted]" in out


def test_the_public_key_id_stays_readable() -> None:
    assert redact(f"key {KEY} here") == "key tfn_0123456789ab_[redacted] here"
    assert redact("nothing secret here: 401 invalid_api_key") == "nothing secret here: 401 invalid_api_key"
    assert redact("a basic setup") == "a basic setup"


def test_stdlib_records_and_their_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad header b'Authorization: Bearer {KEY}'")
        except ValueError:
            logger.exception("Error handling request from %s: %s", "127.0.0.1", f"Bearer {KEY}")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "s3cr3t" not in written
    assert "ValueError" in written and "127.0.0.1" in written


def test_the_structlog_processor_redacts_every_string_value() -> None:
    event = redact_processor(None, "info", {"event": "x", "error": f"Bearer {KEY}", "status": 401})
    assert "s3cr3t" not in str(event) and event["status"] == 401
