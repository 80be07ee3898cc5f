"""RQ entry points: they take ids and hand them to the pipeline."""

from __future__ import annotations

from apps.core import clients
from apps.gateway.pipeline import request_process


async def process_request_job(request_id: str) -> None:
    await request_process(request_id, clients.http())
