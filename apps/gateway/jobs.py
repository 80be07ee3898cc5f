"""RQ entry points: they take ids and hand them to the pipeline."""

from __future__ import annotations

import httpx
from asgiref.sync import async_to_sync

from apps.gateway.pipeline import backend_timeout, request_process


async def _process(request_id: str) -> None:
    # Redirects are never followed: a backend must not be able to point a worker elsewhere.
    async with httpx.AsyncClient(timeout=backend_timeout(), follow_redirects=False) as client:
        await request_process(request_id, client)


def process_request_job(request_id: str) -> None:
    async_to_sync(_process)(request_id)
