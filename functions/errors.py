"""One table maps every outcome to its HTTP status, OpenAI error type and log level.

Handlers raise `BrokerError(code, message)`; the seam turns it into OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`. Messages name the value and the rule, never a key.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import msgspec


class Outcome(NamedTuple):
    status: int
    type: str
    log_level: int


OUTCOMES: dict[str, Outcome] = {
    "invalid_json": Outcome(400, "invalid_request_error", logging.INFO),
    "invalid_request": Outcome(400, "invalid_request_error", logging.INFO),
    "invalid_context": Outcome(400, "invalid_request_error", logging.INFO),
    "unknown_context": Outcome(400, "invalid_request_error", logging.INFO),
    "no_route": Outcome(400, "invalid_request_error", logging.INFO),
    "model_not_found": Outcome(404, "invalid_request_error", logging.INFO),
    "not_found": Outcome(404, "invalid_request_error", logging.INFO),
    "method_not_allowed": Outcome(405, "invalid_request_error", logging.INFO),
    "body_too_large": Outcome(413, "invalid_request_error", logging.INFO),
    "unsupported_media_type": Outcome(415, "invalid_request_error", logging.INFO),
    "unauthorized": Outcome(401, "authentication_error", logging.WARNING),
    "rate_limit_requests": Outcome(429, "rate_limit_error", logging.INFO),
    "rate_limit_tokens": Outcome(429, "rate_limit_error", logging.INFO),
    "concurrency_limit": Outcome(429, "rate_limit_error", logging.INFO),
    "budget_daily": Outcome(429, "insufficient_quota", logging.INFO),
    "budget_monthly": Outcome(429, "insufficient_quota", logging.INFO),
    "upstream_error": Outcome(502, "api_error", logging.WARNING),
    "upstream_timeout": Outcome(504, "api_error", logging.WARNING),
    "no_provider": Outcome(503, "api_error", logging.WARNING),
    "log_unavailable": Outcome(503, "api_error", logging.ERROR),
    "shutting_down": Outcome(503, "api_error", logging.INFO),
    "internal_error": Outcome(500, "api_error", logging.ERROR),
}


class BrokerError(Exception):
    """An expected failure with a code from `OUTCOMES`; `headers` go on the response."""

    def __init__(self, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code not in OUTCOMES:
            raise KeyError(f"unknown outcome code {code!r}")
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.status = status or OUTCOMES[code].status

    @property
    def outcome(self) -> Outcome:
        return OUTCOMES[self.code]


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    """OpenAI's error shape as JSON bytes."""
    return msgspec.json.encode(
        {"error": {"message": message, "type": OUTCOMES[code].type, "param": param, "code": code}}
    )


def sse_error(code: str, message: str) -> bytes:
    """A final error event for a stream that cannot go on (OpenAI sends errors this way too)."""
    return b"data: " + error_body(code, message) + b"\n\n"
