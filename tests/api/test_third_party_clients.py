# mypy: disable-error-code="arg-type,index,union-attr,attr-defined,call-overload"
"""Real third-party clients against Barista (daphne, a worker, the simulator):
``langchain-openai`` (tools bound to a chat model, structured output) and ``litellm``
used as a client (tools, streaming) — what agent frameworks do, not only our tests."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from tests.api.test_openai_surface import ASK, QUESTION, WEATHER

pytestmark = pytest.mark.django_db(transaction=True)


def get_weather(city: str, days: int = 1) -> str:
    """The weather in a city for a number of days."""
    return f"sunny in {city}"


class Weather(BaseModel):
    """The weather somewhere."""

    city: str
    temperature: float
    sunny: bool


def chat_model(api):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="sim-chat", base_url=api.url, api_key=api.key, max_retries=0)


def test_langchain_bind_tools_plain_and_streamed(api):
    bound = chat_model(api).bind_tools([get_weather])
    message = bound.invoke(QUESTION)
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert message.tool_calls[0]["args"]["city"] == QUESTION
    chunks = list(bound.stream(QUESTION + " (streamed)"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert len(chunks) > 3
    assert merged.tool_calls[0]["name"] == "get_weather"
    assert merged.tool_calls[0]["args"]["city"] == QUESTION + " (streamed)"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(api, method):
    structured = chat_model(api).with_structured_output(Weather, method=method)
    found = structured.invoke("Weather in Porto, as an object")
    assert isinstance(found, Weather)
    assert found.city == "Weather in Porto, as an object" and found.sunny is True


def test_litellm_as_a_client_tools_and_streaming(api, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network here
    import litellm

    common = {"model": "openai/sim-chat", "api_base": api.url, "api_key": api.key}
    answer = litellm.completion(**common, messages=ASK, tools=[WEATHER])
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == QUESTION
    api.simulator.control(tps=20)  # 1.5 s an answer: text arrives in several batches
    messages = [{"role": "user", "content": "Stream through litellm"}]
    chunks = list(litellm.completion(**common, messages=messages, stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert '"Stream through litellm"' in text and len(chunks) > 3
    streamed = list(
        litellm.completion(
            **common,
            messages=[{"role": "user", "content": "weather, streamed"}],
            tools=[WEATHER],
            stream=True,
        )
    )
    rebuilt = litellm.stream_chunk_builder(streamed)
    call = rebuilt.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "weather, streamed"
