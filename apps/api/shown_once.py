"""A new API key is shown once, on the page after the one that made it (post, redirect,
get: a reload must not make a second key) — without its plaintext ever resting in the
session table. The session keeps the key encrypted (Fernet); the one-time encryption
key goes to the browser alone, in a short-lived, HttpOnly cookie for that page. Neither
half is any use without the other, and both are dropped when the key is shown."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.http import HttpRequest, HttpResponse

SESSION_KEY = "barista.new_api_key"
COOKIE = "barista_new_key"
COOKIE_AGE = 120  # seconds: long enough for the redirect


def stash(request: HttpRequest, response: HttpResponse, plain: str) -> HttpResponse:
    """Keep ``plain`` for the next page of ``request.path`` (the redirect ``response``)."""
    one_time = Fernet.generate_key()
    request.session[SESSION_KEY] = Fernet(one_time).encrypt(plain.encode()).decode()
    response.set_cookie(
        COOKIE,
        one_time.decode(),
        max_age=COOKIE_AGE,
        path=request.path,
        secure=settings.SESSION_COOKIE_SECURE or request.is_secure(),
        httponly=True,
        samesite="Strict",
    )
    return response


def take(request: HttpRequest) -> str | None:
    """The key stashed for this page, once (call ``forget`` on the response too)."""
    sealed = request.session.pop(SESSION_KEY, None)
    one_time = request.COOKIES.get(COOKIE)
    if not sealed or not one_time:
        return None
    try:
        return Fernet(one_time.encode()).decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError):
        return None


def forget(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if COOKIE in request.COOKIES:
        response.delete_cookie(COOKIE, path=request.path, samesite="Strict")
    return response
