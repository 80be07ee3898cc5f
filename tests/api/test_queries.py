"""What an API request asks of the database: a hit writes its ledger row and reads
nothing; a miss reads what admission needs and writes its row. The key and the
backends come from the process's own short-lived copies."""

from __future__ import annotations

import uuid
from dataclasses import asdict

import pytest
from django.core.cache import cache as django_cache

from apps.api import consumers
from apps.api.services import api_key_create
from apps.backends.models import Backend
from apps.gateway import cache
from apps.gateway.validation import chat_request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]


def ask(content: str):
    return chat_request({"model": "sim-chat", "messages": [{"role": "user", "content": content}]})


def test_a_hit_asks_the_database_once_and_a_miss_twice(alice, django_assert_num_queries):
    # Never called: the hit is stored, and the miss is only queued.
    backend = Backend.objects.create(
        name="sim", alias="sim-chat", model_name="m", base_url="http://127.0.0.1:9/v1"
    )
    _, token = api_key_create(owner=alice, name="program")
    stored = ask("asked before")
    key = cache.cache_key(alias="sim-chat", messages=stored[1], params=stored[2], owner_id=alice.id)
    answer = cache.CachedAnswer("stored answer", backend.id, 3, 2)
    django_cache.set(f"{cache.KEY_PREFIX}:{key}", asdict(answer))
    consumers._authorize(token, ask("warm up"), uuid.uuid4(), False)  # key last used: noted

    with django_assert_num_queries(1):  # the ledger row
        hit = consumers._authorize(token, stored, uuid.uuid4(), False).hit
    assert hit is not None and hit.answer == "stored answer"
    with django_assert_num_queries(0):  # the replay reads nothing more
        assert hit.backend_id == backend.pk and hit.backend is not None

    with django_assert_num_queries(2):  # admission's count of what is pending, the row
        authorized = consumers._authorize(token, ask("new"), uuid.uuid4(), False)
        assert authorized.hit is None
        consumers._accept(
            authorized.key.principal(), authorized.request, uuid.uuid4(), False, "chat", False
        )
