"""Small, loud readers for configuration from the environment.

Every setting Barista reads goes through one of these so that a typo in a deployment
(``DEBUG=ture``, ``PORT=80a``) fails at start-up with the variable's name, instead of
silently taking a default. Secrets can also come from ``NAME_FILE`` (Docker/Kubernetes
secrets), as healthchecks does.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if not value:  # unset, or left empty (``.env.example`` lists every name): a file may say
        path = os.environ.get(f"{name}_FILE")
        if path:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
    return default if value is None else value


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {value!r}")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def envfloat(name: str, default: float, *, minimum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def envlist(name: str, default: list[str]) -> list[str]:
    value = envstr(name)  # or NAME_FILE: a list of Redis URLs carries passwords
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]
