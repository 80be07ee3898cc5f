"""The cache page: counters, and flushing all answers or one model's, audited."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.test import Client

from apps.backends.models import Backend
from apps.console.models import AuditEntry
from apps.gateway import cache

pytestmark = pytest.mark.django_db(transaction=True)


def stored(alias: str, text: str) -> str:
    key = cache.cache_key(
        alias=alias, messages=[{"role": "user", "content": text}], params={}, owner_id=1
    )
    assert key is not None
    # Written as the worker writes it (apps.gateway.coalescing.close): encoded, by key.
    answer = cache.encode(cache.CachedAnswer(text, None, 1, 2))
    redis.Redis.from_url(settings.REDIS_URL).set(cache.redis_key(key), answer, ex=60)
    return key


def test_staff_flush_one_model_then_all(staff, alice):
    for alias in ("chat", "deep"):
        Backend.objects.create(
            name=alias, alias=alias, model_name="m", base_url="http://127.0.0.1:9/v1"
        )
    chat_key, deep_key = stored("chat", "one"), stored("deep", "two")
    person = Client()
    person.force_login(alice)
    assert person.get("/console/cache/").status_code == 403
    assert person.post("/console/cache/flush/", {"alias": ""}).status_code == 403
    assert cache.lookup(chat_key) is not None

    client = Client()
    client.force_login(staff)
    page = client.get("/console/cache/").content.decode()
    assert 'data-stat="stored">2<' in page
    client.post("/console/cache/flush/", {"alias": "chat"})
    assert cache.lookup(chat_key) is None and cache.lookup(deep_key) is not None
    client.post("/console/cache/flush/", {"alias": "nope"})
    assert cache.lookup(deep_key) is not None  # an unknown model flushes nothing
    client.post("/console/cache/flush/", {"alias": ""})
    assert cache.lookup(deep_key) is None
    assert list(AuditEntry.objects.order_by("pk").values_list("target", "detail")) == [
        ("chat", "1 answers dropped"),
        ("all models", "1 answers dropped"),
    ]
