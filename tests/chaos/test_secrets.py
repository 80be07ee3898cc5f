"""Secrets never leak: with a canary backend key and a canary user API key in use — answers,
errors, a refused key, a failing backend, every console page — grep the processes' logs,
the pages, the error bodies, ``/metrics`` and a dump of every Redis key: zero
occurrences."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from django.conf import settings
from django.test import Client

from apps.api.services import api_key_create
from apps.gateway.localrun import free_port, wait_http, web_argv, worker_argv
from tests.chaos.conftest import record
from tests.conftest import child_env, make_user, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

BACKEND_KEY = "sk-canary-backend-7f3c9a1e5d"


def test_no_secret_appears_anywhere(start_simulator, processes, tmp_path: Path):
    sim = start_simulator("--api-key", BACKEND_KEY, "--ttft", "0.05")
    backend = sim.register(alias="sim-chat", name="keyed")
    backend.set_api_key(BACKEND_KEY)
    backend.save()
    wrong = start_simulator("--api-key", "sk-someone-else")
    wrong_backend = wrong.register(alias="sim-wrong", name="wrong-key")
    wrong_backend.set_api_key(BACKEND_KEY)  # refused there: a 401 to report without the key
    wrong_backend.save()
    person = make_user("canary-person")
    staff = make_user("canary-staff", staff=True)
    _, user_key = api_key_create(owner=person, name="canary")
    canaries = {"backend key": BACKEND_KEY, "user API key": user_key}

    logs = []
    for name, argv in (("worker", worker_argv()), ("web", web_argv(port := free_port()))):
        log = tmp_path / f"{name}.log"
        logs.append(log)
        handle = log.open("wb")
        process = subprocess.Popen(
            argv, env=child_env(LOG_LEVEL="DEBUG"), stdout=handle, stderr=handle
        )
        processes.started.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")

    seen: list[str] = []  # every body and header we were sent
    api = httpx.Client(base_url=url, timeout=30)
    auth = {"Authorization": f"Bearer {user_key}"}
    hello = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello"}]}

    def keep(response: httpx.Response) -> httpx.Response:
        seen.append(response.text)
        seen.append(repr(dict(response.headers)))
        return response

    assert keep(api.post("/v1/chat/completions", json=hello, headers=auth)).status_code == 200
    streamed = keep(api.post("/v1/chat/completions", json={**hello, "stream": True}, headers=auth))
    assert streamed.status_code == 200
    assert (
        keep(
            api.post("/v1/chat/completions", json={**hello, "model": "sim-wrong"}, headers=auth)
        ).status_code
        == 502
    )
    # A key that is almost right, a key in the wrong place, a body that is wrong.
    assert (
        keep(
            api.post(
                "/v1/chat/completions",
                json=hello,
                headers={"Authorization": f"Bearer {user_key[:-2]}xx"},
            )
        ).status_code
        == 401
    )
    assert (
        keep(
            api.post("/v1/chat/completions", json=hello, headers={"Authorization": user_key})
        ).status_code
        == 401
    )
    assert keep(api.post("/v1/chat/completions", content=b"{", headers=auth)).status_code == 400
    keep(api.get("/v1/models", headers=auth))

    console = Client()
    console.force_login(staff)
    wait_for(lambda: "wrong-key" in console.get("/console/backends/").content.decode())
    pages = [
        "/console/", "/console/backends/", f"/console/backends/{backend.pk}/",
        f"/console/backends/{wrong_backend.pk}/", "/console/backends/live.json",
        "/console/queues/", "/console/jobs/?kind=failed", "/console/jobs/?kind=waiting",
        "/console/workers/", "/console/cache/", "/console/keys/", "/console/audit/",
        "/console/metrics/", "/metrics", "/", "/settings/", "/settings/keys/", "/models.json",
    ]  # fmt: skip
    for page in pages:
        response = console.get(page)
        assert response.status_code == 200, page
        seen.append(response.content.decode())
    owner = Client()
    owner.force_login(person)
    for page in ("/", "/settings/", "/settings/keys/"):
        seen.append(owner.get(page).content.decode())
    # Test connection reports the refusal without echoing the key.
    tested = console.post(
        f"/console/backends/{wrong_backend.pk}/",
        {
            "name": "wrong-key", "alias": "sim-wrong", "base_url": wrong.base_url,
            "model_name": "sim-model", "tier": "primary", "weight": "1",
            "max_concurrency": "8", "timeout": "60", "price_input_per_million": "0",
            "price_output_per_million": "0", "api_key_env": "", "state": "enabled",
            "action": "test",
        },
    ).content.decode()  # fmt: skip
    assert "refused the API key" in tested
    seen.append(tested)

    # Everything Redis holds, as raw bytes.
    connection = redis_lib.Redis.from_url(settings.REDIS_URL)
    dump = b"".join(
        (key + (connection.dump(key) or b"")) for key in connection.scan_iter(count=1000)
    )
    for process in processes.started:
        process.terminate()
    for process in processes.started:
        process.wait(timeout=20)
    log_text = "\n".join(log.read_text(errors="replace") for log in logs)
    assert "GET /v1" in log_text or "POST /v1" in log_text  # the logs did record the traffic

    found = {}
    places = {"pages and responses": "\n".join(seen), "logs": log_text}
    for label, secret in canaries.items():
        for place, text in places.items():
            found[f"{label} in {place}"] = text.count(secret)
        found[f"{label} in Redis"] = dump.count(secret.encode())
    assert sum(found.values()) == 0, found
    record(
        "secrets",
        canaries=list(canaries),
        places_checked=[
            "logs (worker, web, DEBUG level)",
            f"{len(pages) + 3} pages",
            "API bodies and headers",
            "/metrics",
            f"Redis dump ({len(dump)} bytes)",
        ],
        occurrences=sum(found.values()),
    )
