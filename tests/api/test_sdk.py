# mypy: disable-error-code="arg-type,index,operator,union-attr,misc"
# (the SDK is strictly typed; these tests pass it plain dicts and read optional fields)
"""The official ``openai`` package against Barista (daphne on loopback, a real worker, a
simulator process): answers, streams, usage, and the SDK's own exception classes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from apps.api.services import api_key_create, person_limits_set
from apps.gateway import admission
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def client(api, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url, api_key=api.key, max_retries=0, **options)


def test_a_completion_arrives_with_usage_in_the_ledger_under_the_keys_owner(api, alice):
    answer = client(api).chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "Say hello to the SDK"}]
    )
    assert '"Say hello to the SDK"' in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion" and answer.model == "sim-chat"
    assert answer.usage.completion_tokens == 30
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 30
    row = PromptRequest.objects.get()
    assert (row.owner, row.source, row.api_key_id, row.status) == (alice, "api", api.row.pk, "done")
    assert answer.id == f"chatcmpl-{row.id}"


def test_a_stream_streams_as_tokens_arrive(api):
    api.simulator.control(ttft=0.1, tps=20, tokens=30)  # about 1.5 s in all
    started = time.monotonic()
    arrivals, parts, usage = [], [], None
    stream = client(api).chat.completions.create(
        model="sim-chat",
        messages=[{"role": "user", "content": "Stream to me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
                arrivals.append(time.monotonic() - started)
    text = "".join(parts)
    assert '"Stream to me"' in text
    assert len(arrivals) >= 5
    assert arrivals[0] < arrivals[-1] - 0.7  # bytes came as tokens came, not at the end
    assert usage is not None and usage.completion_tokens == 30
    assert PromptRequest.objects.get().answer == text


def test_the_async_client_runs_requests_side_by_side(api):
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=api.url, api_key=api.key, max_retries=0) as sdk:
            answers = await asyncio.gather(
                *(
                    sdk.chat.completions.create(
                        model="sim-chat", messages=[{"role": "user", "content": f"async {i}"}]
                    )
                    for i in range(8)
                )
            )
        return [a.choices[0].message.content for a in answers]

    contents = asyncio.run(main())
    for index, content in enumerate(contents):
        assert f'"async {index}"' in content


def test_models_are_the_aliases_this_key_may_use(api, alice, start_simulator):
    other = start_simulator()
    other.register(alias="sim-deep")
    assert {m.id for m in client(api).models.list()} == {"sim-chat", "sim-deep"}
    _, narrow = api_key_create(owner=alice, name="narrow", allowed_models=["sim-deep"])
    sdk = openai.OpenAI(base_url=api.url, api_key=narrow, max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["sim-deep"]
    assert sdk.models.retrieve("sim-deep").id == "sim-deep"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("sim-chat")


def test_errors_raise_the_sdks_matching_exceptions(api, alice):
    message = [{"role": "user", "content": "hi"}]
    bad = openai.OpenAI(base_url=api.url, api_key="bar-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="sim-chat", messages=message)
    with pytest.raises(openai.NotFoundError) as missing:
        client(api).chat.completions.create(model="no-such-model", messages=message)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as invalid:
        client(api).chat.completions.create(model="sim-chat", messages=message, temperature=7)
    assert invalid.value.body["param"] == "temperature"
    _, narrow = api_key_create(owner=alice, name="narrow", allowed_models=["sim-deep"])
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=api.url, api_key=narrow, max_retries=0).chat.completions.create(
            model="sim-chat", messages=message
        )
    _, slow = api_key_create(owner=alice, name="one a minute", requests_per_minute=1)
    limited = openai.OpenAI(base_url=api.url, api_key=slow, max_retries=0)
    limited.chat.completions.create(model="sim-chat", messages=message)
    with pytest.raises(openai.RateLimitError) as refused:
        limited.chat.completions.create(model="sim-chat", messages=message)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    api.simulator.control(error_rate=1)
    with pytest.raises(openai.InternalServerError) as failed:
        client(api).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "fail me"}]
        )
    assert failed.value.status_code == 502
    assert failed.value.body["type"] == "api_error"


def test_a_key_past_its_tokens_per_minute_waits_for_the_next_minute(api, alice):
    _, thrifty = api_key_create(owner=alice, name="thrifty", tokens_per_minute=20)
    sdk = openai.OpenAI(base_url=api.url, api_key=thrifty, max_retries=0)
    first = sdk.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "spend my tokens"}]
    )
    assert first.usage.total_tokens > 20  # the answer itself went over the minute's budget
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "and some more"}]
        )
    assert "20 tokens per minute" in refused.value.body["message"]
    assert int(refused.value.response.headers["retry-after"]) >= 1
    # The main key, without that limit, is not held back by it.
    client(api).chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "and some more"}]
    )


def early_in_a_minute() -> None:
    """Per-minute limits count in clock minutes: start where a test fits in one."""
    wait_for(lambda: time.time() % 60 < 40, timeout=25, interval=0.2)


def test_limits_staff_set_on_a_person_hold_across_all_their_keys(api, alice, bob):
    early_in_a_minute()
    person_limits_set(
        owner=alice, requests_per_minute=2, tokens_per_minute=None, max_concurrent=None
    )
    ask: dict[str, Any] = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
    client(api).chat.completions.create(**ask)
    client(api).chat.completions.create(**ask)
    # A new key does not escape them.
    _, another = api_key_create(owner=alice, name="another")
    sdk = openai.OpenAI(base_url=api.url, api_key=another, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(**ask)
    assert "all your keys') limit is 2 requests per minute" in refused.value.body["message"]
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    # Someone else is not held back by them.
    _, bobs = api_key_create(owner=bob, name="bob's")
    openai.OpenAI(base_url=api.url, api_key=bobs, max_retries=0).chat.completions.create(**ask)


def test_a_client_that_hangs_up_is_still_charged_for_its_tokens(api, alice, redis_conn):
    """Hanging up just before the end must not make a request free under a tokens-per-
    minute limit: what it sent and what it was sent so far are counted."""
    early_in_a_minute()
    api.simulator.control(ttft=0.05, tps=5, tokens=100)  # twenty seconds of answer
    row, thrifty = api_key_create(owner=alice, name="thrifty", tokens_per_minute=100)
    sdk = openai.OpenAI(base_url=api.url, api_key=thrifty, max_retries=0)
    question = [{"role": "user", "content": "tell me everything " + "please " * 60}]
    stream = sdk.chat.completions.create(model="sim-chat", messages=question, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the answer has begun: hang up
    stream.close()
    window = int(time.time() // 60)
    counter = admission.API_TOKENS_KEY.format(scope="key", id=row.pk, window=window)
    wait_for(lambda: int(redis_conn.get(counter) or 0) >= 100, timeout=10)
    wait_for(lambda: PromptRequest.objects.filter(status="cancelled").exists(), timeout=10)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="sim-chat", messages=question)
    assert "100 tokens per minute" in refused.value.body["message"]
