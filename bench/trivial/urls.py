from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

ANSWER = {
    "id": "chatcmpl-trivial",
    "object": "chat.completion",
    "created": 0,
    "model": "trivial",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A fixed answer."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
}


@csrf_exempt
async def completion(request: HttpRequest) -> JsonResponse:
    json.loads(request.body or b"{}")  # read the body, as any real view would
    return JsonResponse(ANSWER)


urlpatterns = [path("v1/chat/completions", completion)]
