"""Browser JavaScript on the origins staff list (BARISTA_API_CORS_ORIGINS) may call /v1/;
pages anywhere else get no CORS header, so their browsers keep the answers from them."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "https://app.example"
HELLO = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    # What the openai package sends from a browser, beside the key and the JSON body.
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}
EXPOSED = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-barista-request-id",
    "x-barista-cache",
    "retry-after",
}


def names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",")}


def readable_from(page: str, response: httpx.Response) -> None:
    """What a browser checks before it lets the page read an answer."""
    headers = response.headers
    assert headers["access-control-allow-origin"] == page
    assert names(headers["access-control-expose-headers"]) == EXPOSED
    assert "origin" in names(headers["vary"])
    assert "access-control-allow-credentials" not in headers  # a key, never a cookie


@pytest.mark.web_env(BARISTA_API_CORS_ORIGINS=f"{PAGE},http://localhost:3000")
def test_pages_on_listed_origins_may_call_the_api_and_read_its_answers_and_errors(api):
    url = f"{api.url}/chat/completions"
    preflight = httpx.options(url, headers={"Origin": PAGE, **PREFLIGHT}, timeout=10)
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == PAGE
    assert {"get", "post"} <= names(preflight.headers["access-control-allow-methods"])
    allowed = names(preflight.headers["access-control-allow-headers"])
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert int(preflight.headers["access-control-max-age"]) > 0
    assert "origin" in names(preflight.headers["vary"])

    page = {**api.headers(), "Origin": PAGE}
    answered = httpx.post(url, json=HELLO, headers=page, timeout=10)
    assert answered.status_code == 200
    readable_from(PAGE, answered)
    with httpx.stream("POST", url, json={**HELLO, "stream": True}, headers=page) as streamed:
        assert streamed.status_code == 200
        readable_from(PAGE, streamed)
        assert "data: [DONE]" in streamed.read().decode()
    refused = httpx.post(url, json=HELLO, headers={"Origin": PAGE}, timeout=10)  # no key
    assert refused.status_code == 401
    readable_from(PAGE, refused)
    models = httpx.get(f"{api.url}/models", headers={**api.headers(), "Origin": PAGE})
    readable_from(PAGE, models)

    # A page elsewhere: the preflight is refused, the answers carry no CORS header.
    elsewhere = "https://elsewhere.example"
    preflight = httpx.options(url, headers={"Origin": elsewhere, **PREFLIGHT}, timeout=10)
    assert preflight.status_code == 403
    assert preflight.json()["error"]["code"] == "cors_origin_not_allowed"
    answered = httpx.post(url, json=HELLO, headers={**api.headers(), "Origin": elsewhere})
    assert answered.status_code == 200  # a program may call; a browser would not show it
    for response in (preflight, answered):
        assert not [h for h in response.headers if h.startswith("access-control-")]
        assert "origin" in names(response.headers["vary"])


def test_without_listed_origins_no_page_may_call_the_api(api):
    url = f"{api.url}/chat/completions"
    preflight = httpx.options(url, headers={"Origin": PAGE, **PREFLIGHT}, timeout=10)
    assert preflight.status_code == 403
    assert preflight.json()["error"]["code"] == "cors_origin_not_allowed"
    answered = httpx.post(url, json=HELLO, headers={**api.headers(), "Origin": PAGE})
    assert answered.status_code == 200
    for response in (preflight, answered):
        assert not [h for h in response.headers if h.startswith("access-control-")]


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/path", "*"])
def test_an_origin_that_is_not_scheme_and_host_stops_the_server_from_starting(tmp_path, origin):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "REDIS_URL")}
    checked = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env={**env, "DEBUG": "1", "BARISTA_VAR_DIR": str(tmp_path)}
        | {"BARISTA_API_CORS_ORIGINS": f"http://localhost:3000,{origin}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode != 0
    assert "BARISTA_API_CORS_ORIGINS lists origins, each scheme://host[:port]" in checked.stderr
