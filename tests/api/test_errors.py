"""Every error of /v1/ in OpenAI's shape, with the right status, and a refused request
makes no backend call and leaves no ledger row."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from apps.backends import live
from apps.gateway.localrun import free_port
from apps.gateway.models import PromptRequest
from tests.api.conftest import BODY_LIMIT, no_backend_call
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}


def post(api, body, **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{api.url}/chat/completions",
        content=content,
        headers={**api.headers(), "Content-Type": "application/json", **headers},
        timeout=10,
    )


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b'{"model": "sim-chat", "messages": "\xff\xfe"}', None, "invalid_utf8"),
        ([1, 2], None, None),
        ({"messages": HELLO["messages"]}, "model", None),
        ({"model": "sim-chat"}, "messages", None),
        ({"model": "sim-chat", "messages": []}, "messages", None),
        (
            {"model": "sim-chat", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            None,
        ),
        (  # found by the fuzzer: an unhashable role was a 500
            {"model": "sim-chat", "messages": [{"role": ["user"], "content": "x"}]},
            "messages[0].role",
            None,
        ),
        (
            {"model": "sim-chat", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            None,
        ),
        ({**HELLO, "temperature": "hot"}, "temperature", None),
        ({**HELLO, "max_tokens": 10**9}, "max_tokens", None),
        ({**HELLO, "n": 9}, "n", None),  # BARISTA_API_MAX_N=8
        ({**HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({**HELLO, "stream": "yes"}, "stream", None),
        ({**HELLO, "stream_options": {"include_usage": True}}, "stream_options", None),
        # Unknown fields are passed on to the backend, but not any name at all.
        ({**HELLO, "frob nicate": True}, "frob nicate", "invalid_parameter"),
    ],
)
def test_bad_requests_get_400_with_the_parameter_named(api, body, param, code):
    error = error_of(post(api, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code:
        assert error["code"] == code
    assert no_backend_call(api) and not PromptRequest.objects.exists()


def test_too_many_messages(api):
    many = {"model": "sim-chat", "messages": [{"role": "user", "content": "x"}] * 1001}
    error = error_of(post(api, many), 400)  # the limit: BARISTA_API_MAX_MESSAGES=1000
    assert error["param"] == "messages" and "Too many messages (1001)" in error["message"]
    assert no_backend_call(api)


def test_missing_and_bad_keys_get_401(api):
    response = httpx.post(f"{api.url}/chat/completions", json=HELLO)
    assert error_of(response, 401)["code"] == "missing_api_key"
    response = httpx.post(
        f"{api.url}/chat/completions", json=HELLO, headers={"Authorization": "Bearer bar-nope"}
    )
    error = error_of(response, 401)
    assert error["code"] == "invalid_api_key" and "bar-nope" not in response.text
    api.row.revoked_at = api.row.created_at
    api.row.save()
    assert error_of(post(api, HELLO), 401)["code"] == "invalid_api_key"
    assert no_backend_call(api)


def test_unknown_model_404_and_unknown_route_404(api):
    assert error_of(post(api, {**HELLO, "model": "gpt-9"}), 404)["code"] == "model_not_found"
    response = httpx.get(f"{api.url}/nothing-here", headers=api.headers())
    assert error_of(response, 404)["code"] == "unknown_url"
    assert no_backend_call(api)


def test_every_path_under_v1_answers_json_with_or_without_a_key(api):
    """A wrong base URL is the usual first mistake: it gets a JSON 404 that says where the
    routes are, never Django's HTML page, nor a 401 for a route that does not exist."""
    for path in ("/v1", "/v1/", "/v1/nonsense", "/v1/chat/completion", "/v1/v1/models"):
        url = api.url.removesuffix("/v1") + path
        headers: dict[str, str]
        for headers in (api.headers(), {}):
            error = error_of(httpx.get(url, headers=headers, timeout=10), 404)
            assert error["code"] == "unknown_url" and "/v1/openapi.json" in error["message"]
    assert no_backend_call(api)


def _raw(api, head: bytes, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Talk HTTP/1.1 by hand (to send what httpx would not: chunked or lying bodies)."""
    url = urlparse(api.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(2)
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # refused (and no longer read) before we finished: the answer is what counts
        sock.settimeout(10)
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no full answer; got {reply!r}") from None
            if not data:
                break
            reply += data
            head_end = reply.find(b"\r\n\r\n")
            if head_end >= 0:
                length = int(reply.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(reply) >= head_end + 4 + length:
                    break
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1]


def test_bodies_over_the_limit_get_413_however_they_are_sent(api):
    big = b'{"model": "sim-chat", "messages": [{"role": "user", "content": "' + b"x" * BODY_LIMIT
    error = error_of(post(api, big + b'"}]}'), 413)
    assert error["code"] == "request_too_large"
    auth = f"Authorization: Bearer {api.key}\r\n".encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    chunks = [b"%x\r\n%s\r\n" % (8192, b"x" * 8192) for _ in range(10)] + [b"0\r\n\r\n"]
    status, body = _raw(api, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # A Content-Length over the limit is refused on the header alone.
    over = b"x" * (BODY_LIMIT + 10)
    status, body = _raw(api, head + b"Content-Length: %d\r\n\r\n" % len(over), [over])
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert no_backend_call(api) and not PromptRequest.objects.exists()


def test_backend_trouble_is_502_and_unavailable_is_503(api):
    api.simulator.control(error_rate=1)
    error = error_of(post(api, {**HELLO, "messages": [{"role": "user", "content": "a"}]}), 502)
    assert error["type"] == "api_error" and "HTTP 500" in error["message"]
    assert "127.0.0.1" not in error["message"]  # the backend's address is not told
    from apps.backends.models import Backend

    Backend.objects.update(state="draining")  # nothing takes new prompts…
    # …so, once the web process has reloaded its list (within a second), the alias is
    # not served at all.
    question = {**HELLO, "messages": [{"role": "user", "content": "b"}]}
    refused = wait_for(lambda: (r := post(api, question)).status_code == 404 and r, timeout=5)
    assert error_of(refused, 404)["code"] == "model_not_found"


def test_the_cache_header_and_no_cache(api):
    first = post(api, HELLO)
    second = post(api, HELLO)
    third = post(api, HELLO, **{"Cache-Control": "no-cache"})
    assert [r.headers["x-barista-cache"] for r in (first, second, third)] == [
        "miss",
        "hit",
        "miss",
    ]
    assert first.json()["choices"] == second.json()["choices"]
    assert api.simulator.stats()["requests_total"] == 2
    # Streamed, the header goes out with the first tokens: it says "hit" all the same.
    with httpx.stream(
        "POST",
        f"{api.url}/chat/completions",
        json={**HELLO, "stream": True},
        headers=api.headers(),
        timeout=10,
    ) as streamed:
        assert streamed.headers["x-barista-cache"] == "hit"
        assert "[DONE]" in streamed.read().decode()
    assert api.simulator.stats()["requests_total"] == 2


def test_a_client_that_hangs_up_cancels_its_request(api):
    api.simulator.control(ttft=0.2, tps=10, tokens=100)  # ten seconds of answer
    body = {**HELLO, "stream": True}
    with httpx.stream("POST", f"{api.url}/chat/completions", json=body, headers=api.headers()) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # one token seen: hang up
    wait_for(lambda: PromptRequest.objects.get().status == "cancelled", timeout=10)
    wait_for(lambda: api.simulator.stats()["disconnects_total"] == 1, timeout=10)
    time.sleep(0.3)
    assert api.simulator.stats()["in_flight"] == 0


def open_circuit(live_conn) -> int:
    """The backend's circuit as a run of failures leaves it: open, for a long cool-down."""
    from apps.backends.models import Backend

    backend = Backend.objects.get()
    live_conn.hset(
        f"barista:backend:{backend.pk}:stats",
        mapping={"circuit": "open", "open_until": "99999999999"},
    )
    return backend.pk


@pytest.mark.worker_env(BARISTA_BACKEND_RETURN_WAIT="1")
def test_every_backend_down_past_the_wait_is_503_with_retry_after(api, live_conn):
    api.simulator.process.kill()
    api.simulator.process.wait()
    open_circuit(live_conn)
    response = post(api, {**HELLO, "messages": [{"role": "user", "content": "c"}]})
    error = error_of(response, 503)
    assert error["code"] == "unavailable" and "failing right now" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert PromptRequest.objects.get().status == "failed"


def test_a_client_that_asks_not_to_wait_is_refused_at_once_while_every_backend_is_down(
    api, live_conn
):
    # Down for real: a periodic health check of a live backend would close the circuit
    # (it did, once, in CI, between these two lines and the request).
    api.simulator.process.kill()
    api.simulator.process.wait()
    open_circuit(live_conn)
    body = {**HELLO, "messages": [{"role": "user", "content": "now or never"}]}
    response = post(api, body, **{"X-Barista-Wait": "0"})
    error = error_of(response, 503)
    assert error["code"] == "unavailable" and "failing right now" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert not PromptRequest.objects.exists()  # nothing recorded, nothing queued


def test_an_open_circuit_on_a_backend_that_answers_is_probed_at_once(api, live_conn):
    backend = open_circuit(live_conn)
    response = post(api, {**HELLO, "messages": [{"role": "user", "content": "c"}]})
    assert response.status_code == 200  # no cool-down sat out: a probe found it well
    assert live.snapshot_sync(live_conn, [backend])[backend].circuit == "closed"
    assert api.simulator.stats()["requests_total"] == 1


@pytest.mark.web_env(BARISTA_JOB_TIMEOUT="2")
def test_an_answer_that_takes_too_long_is_504(api):
    api.simulator.control(ttft=30)
    error = error_of(post(api, {**HELLO, "messages": [{"role": "user", "content": "d"}]}), 504)
    assert error["code"] == "timeout"
    assert PromptRequest.objects.get().status == "failed"


def test_a_body_nested_past_the_bound_is_a_400_and_a_deep_schema_within_it_is_fine(api):
    """Bounded right after parsing: 1,200 levels used to reach the cache key's recursive
    normalizing and give a 500 (issue 18); nothing after the parser has to cope now."""
    deep: object = "x"
    for _ in range(1_200):
        deep = {"a": deep}
    error = error_of(post(api, {**HELLO, "vendor_extra": deep}), 400)
    assert error["code"] == "invalid_json" and "64 levels" in error["message"]
    assert no_backend_call(api) and not PromptRequest.objects.exists()
    schema: object = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"inner": schema}}
    tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    response = post(api, {**HELLO, "tools": [tool]})
    assert response.status_code == 200, response.text


PRODUCTION_WEB = {
    "DEBUG": "0",
    "SECRET_KEY": "tests-" + "k" * 50,
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "SECURE_PROXY_SSL_HEADER": "1",
}


@pytest.mark.web_env(**PRODUCTION_WEB)
def test_with_debug_off_plain_http_is_refused_and_https_answers_carry_hsts(api):
    refused = post(api, HELLO)
    assert error_of(refused, 403)["code"] == "https_required"
    assert "strict-transport-security" not in refused.headers
    assert no_backend_call(api) and not PromptRequest.objects.exists()
    models = httpx.get(f"{api.url}/models", headers=api.headers(), timeout=10)
    assert error_of(models, 403)["code"] == "https_required"

    # Behind a proxy that ends TLS and says so (SECURE_PROXY_SSL_HEADER): served, with
    # the same HSTS header the pages send, on the production defaults.
    answered = post(api, HELLO, **{"X-Forwarded-Proto": "https"})
    assert answered.status_code == 200, answered.text
    hsts = "max-age=3600; includeSubDomains; preload"
    assert answered.headers["strict-transport-security"] == hsts
    models = httpx.get(
        f"{api.url}/models", headers={**api.headers(), "X-Forwarded-Proto": "https"}, timeout=10
    )
    assert models.status_code == 200 and models.headers["strict-transport-security"] == hsts
    # A proxy saying "http" is plain HTTP.
    error_of(post(api, HELLO, **{"X-Forwarded-Proto": "http"}), 403)


def test_a_nul_character_anywhere_is_a_400_and_changes_nothing(api):
    """PostgreSQL stores no NUL in text or JSON: refused at the door on every database,
    rather than a server error when the ledger row is written."""
    for body in (
        {**HELLO, "messages": [{"role": "user", "content": "a\u0000b"}]},
        {**HELLO, "user": "\u0000"},
        {**HELLO, "metadata": {"k\u0000": "v"}},
    ):
        assert error_of(post(api, body), 400)["code"] == "invalid_text"
    assert no_backend_call(api) and not PromptRequest.objects.exists()


def test_a_database_that_does_not_answer_is_a_clear_503_on_the_api_and_on_pages(start_web):
    # A web process whose PostgreSQL is away (nothing listens on the port): the API says
    # so in OpenAI's shape, a page with a 503 page, each within the pool's wait, not a 500.
    url = start_web(
        DATABASE_URL=f"postgres://barista@127.0.0.1:{free_port()}/barista",
        DATABASE_POOL_TIMEOUT="1",
    )
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json=HELLO,
        headers={"Authorization": "Bearer bar-" + "k" * 43},
        timeout=30,
    )
    error = error_of(response, 503)
    assert error["code"] == "unavailable" and "database" in error["message"], error
    assert response.headers["retry-after"] == "5"
    assert time.monotonic() - started < 10
    # A signed-in page reads its session from the database.
    page = httpx.get(f"{url}/", cookies={"sessionid": "x" * 32}, timeout=30)
    assert page.status_code == 503, page.text[:300]
    assert "database is not answering" in page.text and page.headers["retry-after"] == "5"
    assert "Traceback" not in page.text
