"""RQ entry points: they take ids and hand them to the pipeline."""

from __future__ import annotations

from apps.gateway.pipeline import request_process
from apps.gateway.worker import runtime


def process_request_job(request_id: str) -> None:
    worker_runtime = runtime()
    worker_runtime.run(request_process(request_id, worker_runtime.client))
