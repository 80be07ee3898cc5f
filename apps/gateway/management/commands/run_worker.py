from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.gateway.worker import run_worker


class Command(BaseCommand):
    help = "Run a gateway worker: many prompts in flight on one event loop."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--queues", nargs="*", default=None, help="queues, in priority order")
        parser.add_argument("--name", default=None)
        parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")

    def handle(self, *args: Any, **options: Any) -> None:
        run_worker(
            queue_names=options["queues"] or settings.BARISTA_QUEUES,
            name=options["name"],
            burst=options["burst"],
        )
