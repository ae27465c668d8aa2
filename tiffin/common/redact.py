"""Keep credentials out of logs: whatever a log line carries (an HTTP parser's error quoting a raw header, an
exception's text), API key secrets and Authorization values are replaced before it is written."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

# A password in a URL's user part (redis://:PASSWORD@host, redis://user:PASSWORD@host).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@")

# A tiffin key keeps its public id (useful when reading logs); its secret goes. Anything else shaped like a
# key prefix, a Bearer credential or an Authorization header value goes entirely.
_PATTERNS = [
    (re.compile(r"tfn_([0-9a-f]{12})_[A-Za-z0-9_\-\\]*"), r"tfn_\1_[redacted]"),
    (re.compile(r"tfn_(?![0-9a-f]{12}_\[redacted\])[A-Za-z0-9_\-\\]+"), "tfn_[redacted]"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?)[^\r\n'\"]*"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer)(\s+|\\x[0-9a-f]{2}|\\t)[^\s'\"]*"), r"\1 [redacted]"),
    (re.compile(r"(?i)\b(basic)(\s+|\\t)[A-Za-z0-9+/=]{8,}"), r"\1 [redacted]"),
    (_URL_PASSWORD, r"\1[redacted]@"),
]


# Every pattern above needs one of these: text without any (nearly every log value) is returned after one search.
_MAYBE = re.compile(r"(?i)tfn_|authorization|bearer|basic|://")


def safe_url(url: str) -> str:
    """`url` as it may be shown or logged: its password (if any) replaced."""
    return _URL_PASSWORD.sub(r"\1[redacted]@", url)


def redact(text: str) -> str:
    """`text` without credentials."""
    if not _MAYBE.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter for stdlib logging (aiohttp, asyncio): redacts the message and any traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor (last before rendering): redacts every string value, tracebacks included."""
    for name, value in event_dict.items():
        if isinstance(value, str):
            event_dict[name] = redact(value)
    return event_dict
