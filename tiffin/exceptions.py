"""Every error tiffin raises on purpose, under one base class.

    TiffinError
    ├── ConfigError          a deployment file is wrong (names file, field, problem)
    ├── ModelError           a model cannot be found or converted
    ├── RedisServerError     the embedded Redis would not start
    └── RequestError         a request cannot be served; carries its HTTP status and OpenAI error type
        ├── BadRequest           400  malformed JSON or fields
        ├── NotFound             404  no route or model
        ├── MethodNotAllowed     405
        ├── RequestTimeout       408  the body did not arrive in time (slow client)
        ├── PayloadTooLarge      413  (also a compressed body that grows past the limit)
        ├── UnsupportedEncoding  415  a Content-Encoding other than gzip, deflate or identity
        ├── QueueFull            429  (Retry-After)
        ├── ServerFault          500  an unexpected failure at the edge (no detail is given out)
        ├── UpstreamFailed       502  the replica failed before answering
        ├── UpstreamTimeout      504  the replica took the request but did not answer in time
        ├── ReplicaError         any  an error a replica reported in an error frame, relayed as is
        ├── Draining             503  (Retry-After)
        ├── NoRunner             503  no ready runner within the deadline (Retry-After)
        └── WaitTimeout          504  no replica took the request within the wait deadline (Retry-After)

Exceptions become HTTP responses in one place per service (`tiffin.errors.error_response`).
"""

from __future__ import annotations


class TiffinError(Exception):
    """Base class of tiffin's own errors."""


class ConfigError(TiffinError):
    """One or more deployment files are invalid; `problems` lists `file: field: problem` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelError(TiffinError):
    """A model folder is missing or a built-in model cannot be prepared."""


class RedisServerError(TiffinError):
    """The embedded redis-server could not be started."""


class RequestError(TiffinError):
    """A request that gets an error answer instead of a reply."""

    status = 500
    error_type = "server_error"
    code: str | None = None
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after
        if code is not None:
            self.code = code


class BadRequest(RequestError):
    status = 400
    error_type = "invalid_request_error"


class NotFound(RequestError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(RequestError):
    status = 405
    error_type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(RequestError):
    status = 408
    error_type = "invalid_request_error"
    code = "body_timeout"


class UnsupportedEncoding(RequestError):
    status = 415
    error_type = "invalid_request_error"
    code = "unsupported_content_encoding"


class ServerFault(RequestError):
    status = 500
    error_type = "server_error"
    code = "internal_error"


class QueueFull(RequestError):
    status = 429
    error_type = "rate_limit_error"
    code = "queue_full"
    retry_after = 1


class UpstreamFailed(RequestError):
    status = 502
    error_type = "server_error"
    code = "upstream_failed"


class Draining(RequestError):
    status = 503
    error_type = "server_error"
    code = "draining"
    retry_after = 1


class NoRunner(RequestError):
    status = 503
    error_type = "server_error"
    code = "no_runner"
    retry_after = 5


class WaitTimeout(RequestError):
    status = 504
    error_type = "timeout_error"
    code = "wait_timeout"
    retry_after = 10


class UpstreamTimeout(RequestError):
    status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class ReplicaError(RequestError):
    """An error a replica reported (error frame) before any reply byte; its status is relayed as is."""

    def __init__(self, status: int, message: str, code: str | None, error_type: str = "server_error") -> None:
        super().__init__(message, code=code)
        self.status = status
        self.error_type = error_type
