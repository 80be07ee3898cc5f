"""Sign-in throttling: too many failed passwords for one account, or from one address,
and further tries are refused for a while without checking the password.

Counters live in the cache (Redis) in fixed windows: ``BARISTA_SIGNIN_ACCOUNT_FAILURES``
per account and ``BARISTA_SIGNIN_ADDRESS_FAILURES`` per address within
``BARISTA_SIGNIN_WINDOW`` seconds. A successful sign-in clears its account's count (not its
address's: one address guessing many accounts stays throttled). The account is keyed by
a hash of the lower-cased user name, so the cache holds no user names. The address is
``REMOTE_ADDR``: behind a proxy, run daphne with ``--proxy-headers`` so it is the
client's, not the proxy's.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpResponse


class Throttled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def _keys(username: str, address: str) -> list[tuple[str, int]]:
    window = int(time.time() // settings.BARISTA_SIGNIN_WINDOW)
    account = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [
        (f"signin:account:{account}:{window}", settings.BARISTA_SIGNIN_ACCOUNT_FAILURES),
        (f"signin:address:{address}:{window}", settings.BARISTA_SIGNIN_ADDRESS_FAILURES),
    ]


def signin_check(*, username: str, address: str) -> None:
    """Raise ``Throttled`` if this account or this address failed too often lately."""
    keys = _keys(username, address)
    counts = cache.get_many([key for key, _ in keys])
    if any(int(counts.get(key) or 0) >= most for key, most in keys):
        window = settings.BARISTA_SIGNIN_WINDOW
        raise Throttled(max(1, math.ceil(window - time.time() % window)))


def signin_failed(*, username: str, address: str) -> None:
    for key, _ in _keys(username, address):
        cache.add(key, 0, timeout=settings.BARISTA_SIGNIN_WINDOW + 1)
        cache.incr(key)


def signin_succeeded(*, username: str, address: str) -> None:
    cache.delete(_keys(username, address)[0][0])


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's sign-in form, refusing throttled accounts and addresses before it checks
    the password, and counting the failures."""

    throttled: Throttled | None = None

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        try:
            signin_check(username=username, address=address)
        except Throttled as exc:
            self.throttled = exc
            minutes = math.ceil(exc.retry_after / 60)
            raise ValidationError(
                f"Too many failed sign-ins. Try again in {minutes} minute"
                f"{'s' if minutes != 1 else ''}.",
                code="throttled",
            ) from None
        try:
            cleaned = super().clean()
        except ValidationError:
            if username and self.cleaned_data.get("password"):
                signin_failed(username=username, address=address)
            raise
        signin_succeeded(username=username, address=address)
        return cleaned


class LoginView(auth_views.LoginView):
    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if form.throttled is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.throttled.retry_after)
        return response
