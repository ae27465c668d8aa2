"""structlog setup: one JSON object per line on stdout, request ids bound through contextvars."""

from __future__ import annotations

import logging
import os
import sys

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
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component)
    return logger
