"""What DEBUG's error pages may show of the settings."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SecretUrlsFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding connection URLs (they carry passwords: REDIS_URL,
    DATABASE_URL, CACHES' LOCATION, RQ_QUEUES' URL, the channel layer's address)."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|LOCATION|ADDRESS",
        flags=re.IGNORECASE,
    )
