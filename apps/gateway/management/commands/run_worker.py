from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections

from apps.gateway.queues import SERIALIZER, BaristaJob, queue
from apps.gateway.worker import GatewayWorker


class Command(BaseCommand):
    help = "Run a gateway worker: many prompts in flight on one event loop."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--queues", nargs="*", default=None, help="queues, in priority order")
        parser.add_argument("--name", default=None)
        parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")

    def handle(self, *args: Any, **options: Any) -> None:
        # One long-lived process doing all its database work on one thread: keep the
        # connection instead of opening one per call (that was a third of the worker's time).
        # (No pool either: one thread needs one connection, not a pool of them.)
        for alias in connections:
            connections[alias].settings_dict["CONN_MAX_AGE"] = None
            connections[alias].settings_dict.get("OPTIONS", {}).pop("pool", None)
        queues = [queue(name) for name in options["queues"] or settings.BARISTA_QUEUES]
        worker = GatewayWorker(
            queues,
            connection=queues[0].connection,
            serializer=SERIALIZER,
            job_class=BaristaJob,
            name=options["name"] or f"gateway-{os.uname().nodename}-{os.getpid()}",
            concurrency=settings.BARISTA_WORKER_CONCURRENCY,
            heartbeat_interval=settings.BARISTA_WORKER_HEARTBEAT,
            heartbeat_ttl=settings.BARISTA_WORKER_HEARTBEAT_TTL,
            grace=settings.BARISTA_WORKER_GRACE,
            maintenance_interval=settings.BARISTA_WORKER_MAINTENANCE_INTERVAL,
        )
        worker.work(burst=options["burst"])
