"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, and what
each refusal of the gateway becomes on the API (DESIGN.md, decision 8)."""

from __future__ import annotations

import json
import math
from typing import Any

from apps.backends import recovery
from apps.core.outages import RETRY_AFTER, outage_message
from apps.gateway.admission import Quota, Rejection


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or []

    def document(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return {"error": error}

    def body(self) -> bytes:
        return json.dumps(self.document()).encode()


def unavailable(exc: BaseException) -> ApiError:
    """Redis or the database is away (``apps.core.outages``): 503, naming which."""
    return ApiError(
        503,
        outage_message(exc),
        "server_error",
        code="unavailable",
        headers=[(b"retry-after", str(RETRY_AFTER).encode())],
    )


# A failed event's code → HTTP status, when nothing was streamed yet.
FAILURE_STATUS = {"timeout": 504, "unavailable": 503}


def from_rejection(exc: Rejection) -> ApiError:
    """Admission said no: 403 for a model the key may not use, 503 when Barista is busy,
    429 for every other limit — with Retry-After and the key's x-ratelimit-* headers."""
    if exc.code == "model_not_allowed":
        return ApiError(403, exc.message, code=exc.code)
    status = 503 if exc.code == "busy" else 429
    return ApiError(
        status,
        exc.message,
        "rate_limit_exceeded" if status == 429 else "server_overloaded",
        code=exc.code,
        headers=[(b"retry-after", str(exc.retry_after).encode()), *quota_headers(exc.quota)],
    )


def backends_down(model: str, *, retry_after: float) -> ApiError:
    """Every backend of the model is down and the client asked not to wait for one."""
    return ApiError(
        503,
        recovery.failing(model),
        "server_error",
        code="unavailable",
        headers=[(b"retry-after", str(math.ceil(retry_after)).encode())],
    )


def from_failed_event(event: dict[str, Any]) -> ApiError:
    """A request that ended in failure or was cancelled, as the API says it."""
    if event["event"] == "cancelled":
        return ApiError(499, "The request was cancelled.", code="cancelled")
    code = event.get("code") or "backend_failed"
    status = FAILURE_STATUS.get(code, 502)
    return ApiError(
        status,
        event.get("error") or "The request failed.",
        "api_error",
        code=code,
        headers=[(b"retry-after", b"5")] if status == 503 else [],
    )


def quota_headers(quota: Quota | None) -> list[tuple[bytes, bytes]]:
    if quota is None:
        return []
    return [
        (b"x-ratelimit-limit-requests", str(quota.limit).encode()),
        (b"x-ratelimit-remaining-requests", str(quota.remaining).encode()),
        (b"x-ratelimit-reset-requests", f"{quota.reset}s".encode()),
    ]


def model_not_found(alias: str) -> ApiError:
    return ApiError(
        404,
        f"The model {alias!r} does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
