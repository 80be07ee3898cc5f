# mypy: disable-error-code="arg-type,index,operator,union-attr,misc,attr-defined"
# mypy: disable-error-code="list-item,call-overload,type-arg,assignment,dict-item"
# (the SDK is strictly typed; these tests pass it plain dicts and read optional fields)
"""What agents and retrieval pipelines need from /v1/, with the official ``openai``
package (sync, async, streaming) against Barista, a real worker and a simulator that
calls tools, sends logprobs and several choices: the backend's answer comes back as it
sent it — live, from the cache, and to a request that followed an identical one."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from channels.db import database_sync_to_async

from apps.api.services import api_key_create
from apps.backends.models import Backend
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Lisbon?"}]
QUESTION = ASK[0]["content"]


def client(api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url, api_key=api.key, max_retries=0)


def backend_calls(api) -> list[dict]:
    """The tool calls the simulator itself sends for ASK with WEATHER."""
    backend = openai.OpenAI(base_url=api.simulator.base_url, api_key="none", max_retries=0)
    answer = backend.chat.completions.create(
        model=api.simulator.model, messages=ASK, tools=[WEATHER]
    )
    return calls_of(answer.choices[0].message)


def calls_of(message) -> list[dict]:
    return [call.model_dump(exclude_none=True) for call in message.tool_calls or []]


def streamed_calls(stream) -> tuple[list[dict], str | None, int]:
    """Tool-call deltas reassembled as an SDK user would: by index, arguments joined."""
    calls: dict[int, dict] = {}
    finish, pieces = None, 0
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                pieces += 1
                call = calls.setdefault(
                    delta.index,
                    {"id": None, "type": None, "function": {"name": "", "arguments": ""}},
                )
                call["id"] = delta.id or call["id"]
                call["type"] = delta.type or call["type"]
                if delta.function:
                    call["function"]["name"] += delta.function.name or ""
                    call["function"]["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish, pieces


def test_tool_calls_come_back_as_the_backend_sent_them_live_and_from_the_cache(api):
    expected = backend_calls(api)
    assert expected and expected[0]["function"]["name"] == "get_weather"
    answer = client(api).chat.completions.create(model="sim-chat", messages=ASK, tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert calls_of(choice.message) == expected
    assert json.loads(expected[0]["function"]["arguments"])["city"] == ASK[0]["content"]
    row = PromptRequest.objects.get()
    assert row.extra["tool_calls"] == expected and row.extra["finish_reason"] == "tool_calls"
    # The same request again: a cache hit, no backend call, the same tool calls.
    before = api.simulator.stats()["requests_total"]
    again = client(api).chat.completions.with_raw_response.create(
        model="sim-chat", messages=ASK, tools=[WEATHER]
    )
    assert again.headers["x-barista-cache"] == "hit"
    assert calls_of(again.parse().choices[0].message) == expected
    assert again.parse().choices[0].finish_reason == "tool_calls"
    # …and as a stream.
    calls, finish, _ = streamed_calls(
        client(api).chat.completions.create(
            model="sim-chat", messages=ASK, tools=[WEATHER], stream=True
        )
    )
    assert (calls, finish) == (expected, "tool_calls")
    assert api.simulator.stats()["requests_total"] == before


def test_streamed_tool_call_deltas_arrive_in_pieces_and_reassemble_to_the_call(api):
    expected = backend_calls(api)
    calls, finish, pieces = streamed_calls(
        client(api).chat.completions.create(
            model="sim-chat",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
            extra_headers={"Cache-Control": "no-cache"},
        )
    )
    assert (calls, finish) == (expected, "tool_calls")
    assert pieces > 3  # the arguments came in pieces, as the backend streamed them


def test_a_tool_result_in_the_history_is_accepted_and_answered(api):
    first = client(api).chat.completions.create(model="sim-chat", messages=ASK, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 °C and sunny"},
    ]
    answer = client(api).chat.completions.create(
        model="sim-chat", messages=history, tools=[WEATHER]
    )
    assert '"18 °C and sunny"' in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as refused:
        client(api).chat.completions.create(
            model="sim-chat", messages=[*ASK, {"role": "tool", "content": "no id"}]
        )
    assert refused.value.body["param"] == "messages[1].tool_call_id"


async def test_logprobs_and_several_choices_async_plain_and_streamed(api):
    aclient = openai.AsyncOpenAI(base_url=api.url, api_key=api.key, max_retries=0)
    answer = await aclient.chat.completions.create(
        model="sim-chat", messages=ASK, logprobs=True, top_logprobs=2, n=3
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content for c in answer.choices]
    assert len(set(texts)) == 3 and all('"What is the weather in Lisbon?"' in t for t in texts)
    for choice in answer.choices:
        tokens = [entry.token for entry in choice.logprobs.content]
        assert "".join(tokens) == choice.message.content
        assert all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)
    # Streamed: every choice by its index, logprobs with the chunks.
    stream = await aclient.chat.completions.create(
        model="sim-chat",
        messages=[{"role": "user", "content": "Stream three, please"}],
        logprobs=True,
        n=3,
        stream=True,
    )
    text: dict[int, str] = {0: "", 1: "", 2: ""}
    logprobs: dict[int, list[str]] = {0: [], 1: [], 2: []}
    finishes = {}
    async for chunk in stream:
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                logprobs[choice.index] += [entry.token for entry in choice.logprobs.content]
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    for index in range(3):
        assert '"Stream three, please"' in text[index]
        assert "".join(logprobs[index]) == text[index]
    row = await PromptRequest.objects.filter(messages__0__content="Stream three, please").aget()
    assert row.answer == text[0]
    assert [c["content"] for c in row.extra["choices"]] == [text[1], text[2]]
    await aclient.close()


def test_user_and_vendor_fields_reach_the_backend_and_a_dropped_field_does_not(api):
    client(api).chat.completions.create(
        model="sim-chat",
        messages=ASK,
        user="user-1234",
        reasoning_effort="low",
        metadata={"team": "rag"},
        extra_body={"top_k": 20, "min_p": 0.05, "chat_template_kwargs": {"thinking": False}},
    )
    sent = api.simulator.last_request()
    assert sent["user"] == "user-1234"
    assert sent["top_k"] == 20 and sent["min_p"] == 0.05
    assert sent["chat_template_kwargs"] == {"thinking": False}
    assert sent["reasoning_effort"] == "low" and sent["metadata"] == {"team": "rag"}
    # Staff tell Barista this backend refuses min_p and reasoning_effort: they are left
    # out of what it is sent (once the worker's list of backends is reloaded, ≤ 1 s).
    Backend.objects.update(drop_params="min_p, reasoning_effort")

    def sent_without_dropped() -> bool:
        client(api).chat.completions.create(
            model="sim-chat",
            messages=[{"role": "user", "content": "once more"}],
            reasoning_effort="low",
            extra_body={"top_k": 20, "min_p": 0.05},
            extra_headers={"Cache-Control": "no-cache"},
        )
        sent = api.simulator.last_request()
        return "min_p" not in sent and "reasoning_effort" not in sent

    wait_for(sent_without_dropped, timeout=10)
    assert api.simulator.last_request()["top_k"] == 20


def test_what_is_truly_invalid_is_still_refused_with_the_field_named(api):
    cases = [
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools[0].function.name",
        ),
        ({"tool_choice": 7}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"bad name!": 1}, "bad name!"),
    ]
    for extra, param in cases:
        response = httpx.post(
            f"{api.url}/chat/completions",
            headers=api.headers(),
            json={"model": "sim-chat", "messages": ASK, **extra},
        )
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert not PromptRequest.objects.exists()


def test_embeddings_equal_the_backends_and_a_half_cached_batch_asks_only_for_the_rest(api):
    api.simulator.register(
        alias="sim-embed", name="sim-embed", kind="embeddings", share_answers=True
    )
    backend = openai.OpenAI(base_url=api.simulator.base_url, api_key="none", max_retries=0)
    texts = ["espresso", "cortado", "flat white", "lungo"]
    expected = [
        e.embedding for e in backend.embeddings.create(model=api.simulator.model, input=texts).data
    ]
    floats = [
        row["embedding"]
        for row in httpx.post(
            f"{api.simulator.base_url}/embeddings",
            json={"model": api.simulator.model, "input": texts},
        ).json()["data"]
    ]
    before = api.simulator.stats()["embedding_inputs_total"]
    # The SDK asks for base64 (float32) by default, as OpenAI sends it.
    first = client(api).embeddings.with_raw_response.create(model="sim-embed", input=texts[:2])
    assert first.headers["x-barista-cache"] == "miss"
    assert [e.embedding for e in first.parse().data] == expected[:2]
    assert api.simulator.stats()["embedding_inputs_total"] == before + 2
    # Half of this batch is cached: the backend is asked for the other half only, and
    # the answer keeps the caller's order.
    response = httpx.post(
        f"{api.url}/embeddings",
        headers=api.headers(),
        json={"model": "sim-embed", "input": [texts[2], texts[0], texts[3], texts[1]]},
    )
    assert response.status_code == 200 and response.headers["x-barista-cache"] == "partial"
    vectors = [row["embedding"] for row in response.json()["data"]]
    assert vectors == [floats[2], floats[0], floats[3], floats[1]]  # exactly, as numbers
    assert api.simulator.stats()["embedding_inputs_total"] == before + 4
    rows = PromptRequest.objects.filter(kind="embeddings").order_by("queued_at")
    assert [(r.status, r.extra, r.messages) for r in rows] == [
        ("done", {"inputs": 2, "cached": 0}, []),
        ("done", {"inputs": 4, "cached": 2}, []),
    ]
    # A chat model is not an embeddings model, nor the other way round.
    with pytest.raises(openai.NotFoundError):
        client(api).embeddings.create(model="sim-chat", input="x")
    with pytest.raises(openai.NotFoundError):
        client(api).chat.completions.create(model="sim-embed", messages=ASK)
    models = {m.id for m in client(api).models.list()}
    assert {"sim-chat", "sim-embed"} <= models
    # A key's tokens-per-minute limit counts embeddings too.
    _, small = api_key_create(owner=api.row.owner, name="small", tokens_per_minute=3)
    limited = openai.OpenAI(base_url=api.url, api_key=small, max_retries=0)
    limited.embeddings.create(model="sim-embed", input="one two three four")
    with pytest.raises(openai.RateLimitError):
        limited.embeddings.create(model="sim-embed", input="five")


def test_legacy_text_completions_plain_streamed_and_cached(api):
    backend = openai.OpenAI(base_url=api.simulator.base_url, api_key="none", max_retries=0)
    prompt = "Once upon a time at the counter"
    expected = backend.completions.create(model=api.simulator.model, prompt=prompt).choices[0].text
    answer = client(api).completions.create(model="sim-chat", prompt=prompt)
    assert answer.object == "text_completion" and answer.choices[0].text == expected
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens > 0
    row = PromptRequest.objects.get()
    assert (row.kind, row.answer, row.messages) == (
        "text",
        expected,
        [{"role": "user", "content": prompt}],
    )
    stream = client(api).completions.create(
        model="sim-chat", prompt=prompt, stream=True, extra_headers={"Cache-Control": "no-cache"}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Cached like a chat answer, but never mistaken for one: the same text as a chat
    # prompt asks the backend.
    again = client(api).completions.with_raw_response.create(model="sim-chat", prompt=prompt)
    assert again.headers["x-barista-cache"] == "hit" and again.parse().choices[0].text == expected
    chat = client(api).chat.completions.with_raw_response.create(
        model="sim-chat", messages=[{"role": "user", "content": prompt}]
    )
    assert chat.headers["x-barista-cache"] == "miss"
    with pytest.raises(openai.BadRequestError) as refused:
        client(api).completions.create(model="sim-chat", prompt=["one", "two"])
    assert refused.value.body["param"] == "prompt"


RESPONSE_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": WEATHER["function"]["parameters"],
}


def test_responses_api_plain_streamed_and_with_tools(api):
    api.simulator.control(tps=20)  # 1.5 s an answer: text arrives in several batches
    sdk = client(api)
    response = sdk.responses.create(
        model="sim-chat", instructions="Be brief.", input="Hello, Responses"
    )
    assert response.status == "completed" and response.object == "response"
    assert '"Hello, Responses"' in response.output_text
    assert response.usage.output_tokens > 0
    row = PromptRequest.objects.get()
    assert row.messages[0] == {"role": "system", "content": "Be brief."}
    assert response.output_text == row.answer
    # Streamed, with the SDK's helper that checks the events' order and identities.
    with sdk.responses.stream(
        model="sim-chat",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream it"}]}],
    ) as stream:
        kinds, deltas = [], []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert len(deltas) > 3 and "".join(deltas) == final.output_text
    assert '"Stream it"' in final.output_text
    # A function call, streamed: arguments in pieces; then its output sent back.
    with sdk.responses.stream(
        model="sim-chat", input="What is the weather in Lisbon?", tools=[RESPONSE_TOOL]
    ) as stream:
        argument_deltas = [
            event.delta
            for event in stream
            if event.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert len(argument_deltas) > 3 and "".join(argument_deltas) == call.arguments
    assert json.loads(call.arguments)["city"] == "What is the weather in Lisbon?"
    # The same request again is a cache hit: the same call, plain and streamed.
    again = sdk.responses.create(
        model="sim-chat", input="What is the weather in Lisbon?", tools=[RESPONSE_TOOL]
    )
    assert (again.output[0].call_id, again.output[0].arguments) == (call.call_id, call.arguments)
    with sdk.responses.stream(
        model="sim-chat", input="What is the weather in Lisbon?", tools=[RESPONSE_TOOL]
    ) as stream:
        replayed = stream.get_final_response()
    assert replayed.output[0].arguments == call.arguments
    answer = sdk.responses.create(
        model="sim-chat",
        tools=[RESPONSE_TOOL],
        input=[
            {"role": "user", "content": "What is the weather in Lisbon?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 °C"},
        ],
    )
    assert '"18 °C"' in answer.output_text
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="sim-chat", input="x", previous_response_id="resp_1")
    assert refused.value.body["param"] == "previous_response_id"


async def test_async_tool_call_stream_a_coalesced_follower_and_async_embeddings(api):
    """The async client: two identical tool-call requests at once are answered by one
    backend call, and the follower streams the same call; embeddings and a streamed
    response through the async client too."""
    await database_sync_to_async(api.simulator.register)(
        alias="sim-embed", name="sim-embed", kind="embeddings"
    )
    api.simulator.control(ttft=1)
    aclient = openai.AsyncOpenAI(base_url=api.url, api_key=api.key, max_retries=0)
    before = api.simulator.stats()["requests_total"]

    async def ask() -> tuple[list[dict], str | None, str]:
        raw = await aclient.chat.completions.with_raw_response.create(
            model="sim-chat", messages=ASK, tools=[WEATHER], stream=True
        )
        calls: dict[int, dict] = {}
        finish = None
        async for chunk in raw.parse():
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": None, "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    call["arguments"] += (delta.function.arguments or "") if delta.function else ""
                finish = choice.finish_reason or finish
        return [calls[i] for i in sorted(calls)], finish, raw.headers["x-barista-cache"]

    leading = asyncio.create_task(ask())
    # The second is sent while the first's backend call is in flight: it follows it.
    await asyncio.to_thread(wait_for, lambda: api.simulator.stats()["in_flight"] == 1)
    second = await ask()
    first = await leading
    assert first[:2] == second[:2] and first[1] == "tool_calls"
    assert json.loads(first[0][0]["arguments"])["city"] == QUESTION
    assert sorted([first[2], second[2]]) == ["coalesced", "miss"]
    assert api.simulator.stats()["requests_total"] == before + 1
    api.simulator.control(ttft=0.05)
    vectors = await aclient.embeddings.create(model="sim-embed", input=["ristretto", "doppio"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
    deltas = []
    async with aclient.responses.stream(model="sim-chat", input="async response") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text and '"async response"' in final.output_text
    await aclient.close()


def test_on_a_private_model_people_do_not_share_answers_nor_hear_how_they_were_answered(api, bob):
    """The default: answers are each person's own. Bob asking what Alice asked is a
    backend call of his own, and no one is told "hit" or "coalesced"."""
    api.simulator.register(alias="sim-private", name="sim-private")
    _, bobs_key = api_key_create(owner=bob, name="bob")
    alice_client, bob_client = (
        client(api),
        openai.OpenAI(base_url=api.url, api_key=bobs_key, max_retries=0),
    )
    question = [{"role": "user", "content": "a private question"}]
    first = alice_client.chat.completions.with_raw_response.create(
        model="sim-private", messages=question
    )
    again = alice_client.chat.completions.with_raw_response.create(
        model="sim-private", messages=question
    )
    bobs = bob_client.chat.completions.with_raw_response.create(
        model="sim-private", messages=question
    )
    assert all("x-barista-cache" not in r.headers for r in (first, again, bobs))
    outcomes = list(
        PromptRequest.objects.filter(model="sim-private")
        .order_by("queued_at")
        .values_list("owner__username", "cache_outcome")
    )
    assert outcomes == [("alice", "miss"), ("alice", "hit"), ("bob", "miss")]
    assert api.simulator.stats()["requests_total"] == 2
