"""RQ entry points: they take ids and hand them to the pipeline."""

from __future__ import annotations

from apps.gateway.pipeline import request_process
from apps.gateway.worker import http_client


async def process_request_job(request_id: str) -> None:
    await request_process(request_id, http_client())
