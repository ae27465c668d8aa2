"""structlog setup: one JSON object per line on stdout, request ids bound through contextvars."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
from typing import Any, TextIO

import structlog

from tiffin.common.redact import RedactingFilter, redact_processor


def setup_logging(component: str, level: str | None = None) -> structlog.stdlib.BoundLogger:
    """Configure JSON logging for a component process and return its logger."""
    level_name = (level or os.environ.get("TIFFIN_LOG_LEVEL", "info")).upper()
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=getattr(logging, level_name, 20))
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # aiohttp's parser errors quote raw headers (Authorization too)
    # aiohttp's access log would repeat what our one line per request already says.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, 20)),
        logger_factory=_BatchedLines.factory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component)
    return logger


class _BatchedLines:
    """structlog's output: each line written whole, and the lines of one event-loop turn in one write.

    Components run unbuffered (their supervisor reads their output as it comes), where printing a line costs two
    write calls, and one write per request line was up to a tenth of a process's CPU under load. Lines wait only
    for the end of the current loop turn (what a turn did is on record before the process does anything else, and
    a process killed outright loses at most that turn's lines); outside a running loop they go out at once.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    @classmethod
    def factory(cls, stream: TextIO) -> Any:
        """A structlog logger factory handing out one shared writer for `stream`."""
        writer = cls(stream)
        atexit.register(writer.flush)
        return lambda *_args: writer

    def msg(self, message: str) -> None:
        """Write one rendered line (soon: by the end of this loop turn)."""
        self._lines.append(message + "\n")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_on is not loop:  # none scheduled yet (or on a loop that has stopped since)
            self._flush_on = loop
            loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write every held line now."""
        self._flush_on = None
        if self._lines:
            text, self._lines = "".join(self._lines), []
            self._stream.write(text)
            self._stream.flush()
