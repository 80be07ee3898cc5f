"""The OpenAPI 3.1 description of ``/v1/`` (served at ``/v1/openapi.json``)."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "An error, in OpenAI's shape.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json_request(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _answer(description: str, schema: str, streams: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    }
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


_NO_CACHE = {
    "name": "Cache-Control",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "'no-cache' asks the backend again instead of a stored answer.",
}
_NO_WAIT = {
    "name": "X-Barista-Wait",
    "in": "header",
    "required": False,
    "schema": {"enum": ["0", "1"]},
    "description": "'0': answer 503 with Retry-After at once while every backend of the "
    "model is down, instead of waiting for one to come back.",
}
_VENDOR = (
    "Fields not described here are passed on to the backend untouched (vendor extras such "
    "as top_k, min_p, chat_template_kwargs): up to 64, named with letters, digits, '_', "
    "'-' or '.'. Staff may have a backend drop fields it refuses."
)


def _sampling() -> dict[str, Any]:
    cap = settings.BARISTA_API_MAX_TOKENS
    return {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": cap},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "stop": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            ]
        },
        "n": {"type": "integer", "minimum": 1, "maximum": settings.BARISTA_API_MAX_N},
        "user": {"type": "string", "maxLength": 256},
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
            "description": "Only with stream: true.",
        },
    }


def _chat_schemas() -> dict[str, Any]:
    parts = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "description": "text, image_url, …"},
                "text": {"type": "string"},
            },
        },
    }
    content = {"oneOf": [{"type": "string"}, parts]}
    tool_call = {
        "type": "object",
        "required": ["function"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
            },
        },
    }
    message = {
        "oneOf": [
            {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user"]},
                    "content": content,
                },
            },
            {
                "type": "object",
                "required": ["role"],
                "description": "Needs content, or tool_calls.",
                "properties": {
                    "role": {"const": "assistant"},
                    "content": {"oneOf": [{"type": "string"}, parts, {"type": "null"}]},
                    "tool_calls": {"type": "array", "items": tool_call},
                },
            },
            {
                "type": "object",
                "required": ["role", "content", "tool_call_id"],
                "properties": {
                    "role": {"const": "tool"},
                    "content": content,
                    "tool_call_id": {"type": "string"},
                },
            },
        ]
    }
    tool = {
        "type": "object",
        "required": ["type", "function"],
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                    "strict": {"type": "boolean"},
                },
            },
        },
    }
    request = {
        "type": "object",
        "required": ["model", "messages"],
        "description": _VENDOR,
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.BARISTA_API_MAX_MESSAGES,
                "items": message,
            },
            **_sampling(),
            "max_completion_tokens": _sampling()["max_tokens"],
            "logprobs": {"type": "boolean"},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            "tools": {"type": "array", "maxItems": 128, "items": tool},
            "tool_choice": {
                "oneOf": [
                    {"enum": ["none", "auto", "required"]},
                    {
                        "type": "object",
                        "required": ["type", "function"],
                        "properties": {
                            "type": {"const": "function"},
                            "function": {
                                "type": "object",
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                ]
            },
            "parallel_tool_calls": {"type": "boolean"},
            "response_format": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["text", "json_object", "json_schema"]},
                    "json_schema": {"type": "object"},
                },
            },
            "metadata": {"type": "object"},
        },
    }
    completion = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "tool_calls": {"type": "array", "items": tool_call},
                            },
                        },
                        "finish_reason": {"type": "string"},
                        "logprobs": {"type": ["object", "null"]},
                    },
                },
            },
            "usage": {"type": "object"},
        },
    }
    return {"ChatCompletionRequest": request, "ChatCompletion": completion}


def _other_schemas() -> dict[str, Any]:
    sampling = _sampling()
    token_array = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    text_request = {
        "type": "object",
        "required": ["model", "prompt"],
        "description": "One prompt per request. " + _VENDOR,
        "properties": {
            "model": {"type": "string"},
            "prompt": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                        "maxItems": 1,
                    },
                ]
            },
            **_sampling(),
        },
    }
    embeddings_request = {
        "type": "object",
        "required": ["model", "input"],
        "description": _VENDOR,
        "properties": {
            "model": {"type": "string", "description": "An alias served for embeddings."},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 2048,
                        "items": {"oneOf": [{"type": "string", "minLength": 1}, token_array]},
                    },
                    token_array,
                ]
            },
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536},
            "user": {"type": "string", "maxLength": 256},
        },
    }
    item_content = {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"enum": ["input_text", "output_text", "input_image"]},
                        "text": {"type": "string"},
                        "image_url": {"type": "string"},
                    },
                },
            },
        ]
    }
    responses_request = {
        "type": "object",
        "required": ["model", "input"],
        "description": "Stateless: the whole conversation in 'input'. previous_response_id, "
        "conversation and background are refused; function tools only.",
        "properties": {
            "model": {"type": "string"},
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["role", "content"],
                                    "properties": {
                                        "type": {"const": "message"},
                                        "role": {
                                            "enum": ["user", "assistant", "system", "developer"]
                                        },
                                        "content": item_content,
                                    },
                                },
                                {
                                    "type": "object",
                                    "required": ["type", "call_id", "name", "arguments"],
                                    "properties": {
                                        "type": {"const": "function_call"},
                                        "call_id": {"type": "string"},
                                        "name": {"type": "string"},
                                        "arguments": {"type": "string"},
                                    },
                                },
                                {
                                    "type": "object",
                                    "required": ["type", "call_id", "output"],
                                    "properties": {
                                        "type": {"const": "function_call_output"},
                                        "call_id": {"type": "string"},
                                        "output": {"type": "string"},
                                    },
                                },
                            ]
                        },
                    },
                ]
            },
            "instructions": {"type": "string"},
            "max_output_tokens": sampling["max_tokens"],
            **{name: sampling[name] for name in ("temperature", "top_p", "stream", "user")},
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {
                        "type": {"const": "function"},
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                        "description": {"type": "string"},
                        "parameters": {"type": "object"},
                    },
                },
            },
            "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
            "text": {"type": "object"},
            "reasoning": {"type": "object"},
        },
    }
    return {
        "CompletionRequest": text_request,
        "TextCompletion": {
            "type": "object",
            "properties": {"object": {"const": "text_completion"}, "choices": {"type": "array"}},
        },
        "EmbeddingsRequest": embeddings_request,
        "Embeddings": {
            "type": "object",
            "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
        },
        "ResponseRequest": responses_request,
        "Response": {
            "type": "object",
            "properties": {"object": {"const": "response"}, "output": {"type": "array"}},
        },
    }


def _post(operation: str, schema: str, answer: dict[str, Any], *statuses: int) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "security": [{"bearer": []}],
            "parameters": [_NO_CACHE, _NO_WAIT],
            "requestBody": _json_request(schema),
            "responses": {"200": answer, **_errors(*statuses)},
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    model = {
        "type": "object",
        "required": ["id", "object"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    failures = (400, 401, 403, 404, 413, 429, 502, 503, 504)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Barista — OpenAI-compatible API",
            "version": "1",
            "description": "Chat and text completions, the Responses API and embeddings "
            "through Barista's admission, cache, queue and load balancer. Authenticate "
            "with 'Authorization: Bearer <Barista API key>'.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR, "Model": model, **_chat_schemas(), **_other_schemas()},
        },
        "paths": {
            "/v1/chat/completions": _post(
                "createChatCompletion",
                "ChatCompletionRequest",
                _answer(
                    "The answer; a text/event-stream when stream is true. X-Barista-Cache "
                    "says hit, miss or coalesced.",
                    "ChatCompletion",
                ),
                *failures,
            ),
            "/v1/completions": _post(
                "createCompletion",
                "CompletionRequest",
                _answer("A legacy text completion (streamed when asked).", "TextCompletion"),
                *failures,
            ),
            "/v1/responses": _post(
                "createResponse",
                "ResponseRequest",
                _answer("A response, or its typed events when stream is true.", "Response"),
                *failures,
            ),
            "/v1/embeddings": _post(
                "createEmbedding",
                "EmbeddingsRequest",
                _answer(
                    "A vector per input, in order. X-Barista-Cache says hit, miss or partial.",
                    "Embeddings",
                    streams=False,
                ),
                400,
                401,
                403,
                404,
                413,
                429,
                502,
                503,
            ),
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "security": bearer,
                    "responses": {
                        "200": {
                            "description": "The model aliases this key may use (chat and "
                            "embeddings).",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "object": {"const": "list"},
                                            "data": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Model"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(401),
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "One model alias.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Model"}
                                }
                            },
                        },
                        **_errors(401, 404),
                    },
                }
            },
        },
    }
