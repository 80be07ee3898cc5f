from __future__ import annotations

from typing import Any

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand

from apps.gateway.worker import GatewayWorker


class Command(BaseCommand):
    help = "Run a gateway worker that answers queued prompts."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--queues", nargs="*", default=None, help="queues, in priority order")
        parser.add_argument("--name", default=None)
        parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")

    def handle(self, *args: Any, **options: Any) -> None:
        names = options["queues"] or settings.BARISTA_QUEUES
        queues = [django_rq.get_queue(name) for name in names]
        worker = GatewayWorker(queues, connection=queues[0].connection, name=options["name"])
        worker.work(burst=options["burst"], with_scheduler=False, logging_level="WARNING")
