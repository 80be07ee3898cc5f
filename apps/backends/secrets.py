"""Backend API keys at rest: encrypted with Fernet (AES-128-CBC + HMAC-SHA256).

The key is ``BARISTA_SECRETS_KEY`` or, by default, derived from ``SECRET_KEY``; a database
dump alone never yields a backend's key. A key that can no longer be decrypted (the
secret changed) reads as missing, and the backend says so in its errors.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    secret = settings.BARISTA_SECRETS_KEY or settings.SECRET_KEY
    digest = hashlib.sha256(b"barista.backend-keys:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode() if plain else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return ""
