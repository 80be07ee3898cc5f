"""Idempotent first-run setup: the admin user and the demo's simulated backends."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.backends.models import Backend

# name, alias, port, simulator flags (kept in one place: `up` starts what this registers)
DEMO_BACKENDS: list[tuple[str, str, int, list[str]]] = [
    ("sim-fast", "sim-chat", 0, ["--ttft", "0.15", "--tps", "60"]),
    ("sim-medium", "sim-chat", 1, ["--ttft", "0.5", "--tps", "30"]),
    ("sim-slow", "sim-deep", 2, ["--ttft", "1.5", "--tps", "12", "--tokens", "90"]),
]


def simulator_port_base() -> int:
    return int(os.environ.get("BARISTA_SIMULATOR_PORT", "9101"))


class Command(BaseCommand):
    help = "Create the admin user and the demo's simulated backends if they do not exist."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        username = os.environ.get("BARISTA_ADMIN_USER", "admin")
        password = os.environ.get("BARISTA_ADMIN_PASSWORD")
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin user {username!r} exists (its password was printed on the first run; "
                f"reset it with: .venv/bin/python manage.py changepassword {username})."
            )
        else:
            generated = password is None
            password = password or secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username=username, email="", password=password)
            if generated:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Created admin user {username!r} with password: {password}\n"
                        "  (shown once; change it with: .venv/bin/python manage.py "
                        f"changepassword {username})"
                    )
                )
            else:
                self.stdout.write(
                    f"Created admin user {username!r} (password from BARISTA_ADMIN_PASSWORD)."
                )
        if not Backend.objects.exists():
            base = simulator_port_base()
            for name, alias, offset, _flags in DEMO_BACKENDS:
                Backend.objects.create(
                    name=name,
                    alias=alias,
                    model_name=f"{name}-model",
                    base_url=f"http://127.0.0.1:{base + offset}/v1",
                    weight=2 if name == "sim-fast" else 1,
                    simulated=True,
                    accepts_images=alias == "sim-chat",  # the simulator says what it saw
                )
            self.stdout.write(
                "Registered three simulated backends (sim-fast, sim-medium, sim-slow)."
            )
