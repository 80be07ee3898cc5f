"""The simulator is a real HTTP server; these tests talk to it over loopback."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import wait_for

PROMPT = {
    "model": "sim-model",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "What about <b>kiwi-7731</b>?"},
    ],
}


@pytest.fixture
def sim(start_simulator):
    return start_simulator("--ttft", "0", "--tps", "0", "--tokens", "30")


def read_sse(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_answer_quotes_the_last_user_message_verbatim_and_reports_usage(sim):
    body = httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT).json()
    content = body["choices"][0]["message"]["content"]
    assert '"What about <b>kiwi-7731</b>?"' in content
    assert "first question" not in content
    assert body["usage"]["completion_tokens"] > 0
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["object"] == "chat.completion"


def test_answer_is_deterministic_for_a_request_and_differs_for_another(sim):
    url = f"{sim.base_url}/chat/completions"
    first = httpx.post(url, json=PROMPT).json()["choices"][0]["message"]["content"]
    again = httpx.post(url, json=PROMPT).json()["choices"][0]["message"]["content"]
    other = {**PROMPT, "messages": [{"role": "user", "content": "something else"}]}
    different = httpx.post(url, json=other).json()["choices"][0]["message"]["content"]
    assert first == again
    assert first != different


def test_stream_sends_data_chunks_usage_and_done(sim):
    request = {**PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{sim.base_url}/chat/completions", json=request) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert '"What about <b>kiwi-7731</b>?"' in text
    assert chunks[-1]["usage"]["completion_tokens"] == 30
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    plain = httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT).json()
    assert text == plain["choices"][0]["message"]["content"]


def test_max_tokens_truncates_with_finish_reason_length(sim):
    body = httpx.post(f"{sim.base_url}/chat/completions", json={**PROMPT, "max_tokens": 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_models_and_stats(sim):
    models = httpx.get(f"{sim.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["sim-model"]
    httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT)
    stats = sim.stats()
    assert stats["requests_total"] == 1
    assert stats["in_flight"] == 0


def test_error_rate_one_answers_500(start_simulator):
    sim = start_simulator("--error-rate", "1")
    response = httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


def test_hang_rate_one_never_answers(start_simulator):
    sim = start_simulator("--hang-rate", "1")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT, timeout=0.5)
    assert sim.stats()["hangs_total"] == 1


def test_concurrency_cap_answers_429_with_retry_after(start_simulator):
    sim = start_simulator("--hang-rate", "1", "--max-concurrency", "1")
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, f"{sim.base_url}/chat/completions", json=PROMPT, timeout=3)
        wait_for(lambda: sim.stats()["in_flight"] == 1, timeout=5)
        response = httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        with pytest.raises(httpx.ReadTimeout):
            holder.result()


def test_a_client_that_hangs_up_frees_its_slot(start_simulator):
    sim = start_simulator("--ttft", "30")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim.base_url}/chat/completions", json=PROMPT, timeout=0.5)
    wait_for(lambda: sim.stats()["in_flight"] == 0, timeout=5)
    assert sim.stats()["disconnects_total"] == 1


def test_bad_json_is_a_400(sim):
    response = httpx.post(f"{sim.base_url}/chat/completions", content=b"{nope")
    assert response.status_code == 400
