# mypy: disable-error-code="union-attr"
"""Fuzzing /v1/ from its own OpenAPI description (schemathesis) and with arbitrary JSON
(hypothesis): never a 5xx, every error in OpenAI's shape."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

pytestmark = pytest.mark.django_db(transaction=True)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def assert_openai_error_or_success(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_routes_from_the_openapi_description(api, mode):
    """Cases generated from /v1/openapi.json for every route: valid ones, and ones that
    break the description on purpose (negative)."""
    api.simulator.register(alias="sim-embed", name="sim-embed", kind="embeddings")
    document = httpx.get(f"{api.url}/openapi.json").json()
    if mode == GenerationMode.POSITIVE:
        # Valid cases name models that exist, so they go all the way to the backend.
        for name, request in document["components"]["schemas"].items():
            if name.endswith("Request"):
                alias = "sim-embed" if name == "EmbeddingsRequest" else "sim-chat"
                request["properties"]["model"] = {"const": alias}
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    }
    base_url = api.url.removesuffix("/v1")
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call(base_url=base_url, headers=api.headers(), timeout=30)
            assert_openai_error_or_success(response)

        check()
    if mode == GenerationMode.POSITIVE:  # valid cases reached the backend, every kind
        stats = api.simulator.stats()
        assert stats["completed_total"] > 0 and stats["embedding_inputs_total"] > 0, stats


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["sim-chat", "nope"]) | st.text(max_size=8)},
        optional={
            "messages": json_values,
            "temperature": json_values,
            "max_tokens": json_values,
            "stream": json_values,
            "stop": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@pytest.mark.timeout(300)
def test_arbitrary_bodies_never_break_the_api(api):
    with httpx.Client(timeout=30) as client:

        @FUZZ
        @given(body=bodies)
        def check(body: bytes) -> None:
            response = client.post(
                f"{api.url}/chat/completions",
                content=body,
                headers={**api.headers(), "Content-Type": "application/json"},
            )
            assert_openai_error_or_success(response)

        check()
