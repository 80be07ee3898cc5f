"""The channel layer on Redis servers of its own, sharded over two (issue 20, "Redis by
role"): with BARISTA_CHANNELS_REDIS_URLS set, every frame travels through those servers
— both of them — and answers still reach the one person who asked, on both doors."""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import httpx
import pytest
import redis

from apps.api.services import api_key_create
from apps.gateway.localrun import EmbeddedRedis, free_port
from apps.gateway.models import PromptRequest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shards():
    servers = [
        EmbeddedRedis(
            port=free_port(),
            data_dir=Path(tempfile.mkdtemp(prefix="barista-shard-")),
            persist=False,
            password=secrets.token_urlsafe(16),
        )
        for _ in range(2)
    ]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def published(server: EmbeddedRedis) -> int:
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


def test_answers_travel_through_a_sharded_channel_layer(
    alice, shards, start_simulator, start_worker, start_web, settings
):
    sim = start_simulator("--ttft", "0.05", "--tps", "200", "--tokens", "20")
    sim.register(alias="sim-chat")
    env = {"BARISTA_CHANNELS_REDIS_URLS": ",".join(server.url for server in shards)}
    start_worker(**env)
    url = start_web(**env)
    _, key = api_key_create(owner=alice, name="shards")
    main = redis.Redis.from_url(settings.REDIS_URL)
    main_before = main.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    # Enough requests that both shards carry some: each request's group hashes to one.
    for index in range(12):
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json={
                "model": "sim-chat",
                "stream": True,
                "messages": [{"role": "user", "content": f"shard me {index}"}],
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        ) as response:
            assert response.status_code == 200
            text = "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in response.iter_lines()
                if line.startswith("data: {") and '"choices": [{' in line
            )
        assert f'"shard me {index}"' in text
    assert PromptRequest.objects.filter(status="done").count() == 12
    counts = [published(server) for server in shards]
    assert all(count > 0 for count in counts), counts
    # And none on the main Redis: the layer's frames are the shards' alone.
    main_after = main.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    assert main_after == main_before
