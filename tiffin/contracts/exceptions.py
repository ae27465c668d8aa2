"""Every error tiffin raises on purpose, under one base class.

    TiffinError
    ├── ConfigError          a deployment file is wrong (names file, field, problem)
    ├── ModelError           a model cannot be found or converted
    ├── RedisServerError     the embedded Redis would not start
    │   └── StateDirBusy     another process runs the Redis of that state folder
    ├── TLSError             a certificate or key cannot be used (names the file and the problem)
    ├── AppError             a deployment's application cannot be loaded (names the class and the problem)
    └── RequestError         a request cannot be served; carries its HTTP status and OpenAI error type
        ├── BadRequest           400  malformed JSON or fields
        ├── Unauthenticated      401  no API key (or admin token), a malformed one, or one unknown or revoked
        ├── NotFound             404  no route or model (or none this API key opens: the same answer)
        ├── MethodNotAllowed     405
        ├── RequestTimeout       408  the body did not arrive in time (slow client)
        ├── PayloadTooLarge      413  (also a compressed body that grows past the limit)
        ├── UnsupportedEncoding  415  a Content-Encoding other than gzip, deflate or identity
        ├── QueueFull            429  (Retry-After)
        ├── KeyRateLimited       429  the API key sent more requests per second than its limit (Retry-After)
        ├── KeyConcurrencyLimited 429 the API key has its limit of requests in progress (Retry-After)
        ├── ServerFault          500  an unexpected failure at the edge (no detail is given out)
        ├── UpstreamFailed       502  the replica failed before answering
        ├── UpstreamTimeout      504  the replica took the request but did not answer in time
        ├── ReplicaError         any  an error a replica reported in an error frame, relayed as is
        ├── Draining             503  (Retry-After)
        ├── BackendUnavailable   503  Redis unreachable, too slow, or its connections all busy (Retry-After)
        ├── NoRunner             503  no ready runner within the deadline (Retry-After)
        └── WaitTimeout          504  no replica took the request within the wait deadline (Retry-After)

Exceptions become HTTP responses in one place per service (`tiffin.contracts.errors.error_response`).
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


class TLSError(TiffinError):
    """A certificate or key file is missing, unreadable, not PEM, or the pair does not match; names the file."""


class AppError(TiffinError):
    """A deployment's `app` cannot be imported or declares an endpoint wrongly; names the class and the problem."""


class StateDirBusy(RedisServerError):
    """Another process keeps an embedded Redis on the same data folder; two must never share it."""


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

    def response_headers(self) -> dict[str, str]:
        """Headers this error's HTTP answer carries besides Retry-After (e.g. WWW-Authenticate)."""
        return {}


class BadRequest(RequestError):
    status = 400
    error_type = "invalid_request_error"


class Unauthenticated(RequestError):
    """401 as OpenAI answers it; `WWW-Authenticate` tells the client the scheme (RFC 6750)."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, token_sent: bool = False) -> None:
        super().__init__(message)
        self.token_sent = token_sent

    def response_headers(self) -> dict[str, str]:
        # RFC 6750 3.1: no error code when the request carried no credentials at all.
        if self.token_sent:
            return {"WWW-Authenticate": 'Bearer realm="tiffin", error="invalid_token"'}
        return {"WWW-Authenticate": 'Bearer realm="tiffin"'}


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


class KeyRateLimited(RequestError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retry_after = 1


class KeyConcurrencyLimited(RequestError):
    status = 429
    error_type = "rate_limit_error"
    code = "concurrency_limit_exceeded"
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


class BackendUnavailable(RequestError):
    """The edge could not reach its Redis in time (down, restarting, slow, or every pooled connection busy).

    Before the request was accepted nothing of it is queued: the client may simply retry."""

    status = 503
    error_type = "server_error"
    code = "backend_unavailable"
    retry_after = 2


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
