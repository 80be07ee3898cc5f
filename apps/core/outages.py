"""What Barista says when a store every host shares is away: Redis or the database.

Both are shared by every web host, so a load balancer taking hosts out would only swap
Barista's clear answer for its own error page: the hosts stay in, and each door answers
503 with ``Retry-After``, naming what is away (the API in OpenAI's error shape, the chat
socket with an error frame, pages with the page below). What was accepted is not lost:
the ledger holds it, and workers re-run what an outage interrupted.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

REDIS_DOWN = (
    "Barista is temporarily unavailable: its queue (Redis) is not answering. "
    "Try again in a few seconds."
)
DATABASE_DOWN = (
    "Barista is temporarily unavailable: its database is not answering. Try again in a few seconds."
)
RETRY_AFTER = 5

# Errors that mean a shared store is away, not that the request was wrong.
OUTAGES: tuple[type[Exception], ...] = (RedisError, OperationalError, InterfaceError)


def outage_message(exc: BaseException) -> str:
    """What to tell the client about ``exc``, one of ``OUTAGES``."""
    return REDIS_DOWN if isinstance(exc, RedisError) else DATABASE_DOWN


class OutageMiddleware(MiddlewareMixin):
    """A page whose view found Redis or the database away: 503, saying which."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OUTAGES):
            return None
        message = outage_message(exception)
        logger.warning("page %s refused: %s (%s)", request.path, message, type(exception).__name__)
        # Rendered without the request: its context would read the session, from the
        # database that may be the one away.
        page = render_to_string("unavailable.html", {"message": message})
        return HttpResponse(page, status=503, headers={"Retry-After": str(RETRY_AFTER)})
