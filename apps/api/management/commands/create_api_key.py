from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.api.services import api_key_create


class Command(BaseCommand):
    help = "Make an API key for a user and print it (it is shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username of the key's owner")
        parser.add_argument("--name", required=True, help="a label, e.g. the program using it")
        parser.add_argument("--models", default="", help="comma-separated aliases (default: all)")
        parser.add_argument("--rpm", type=int, default=None, help="requests per minute")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            owner = User.objects.get(username=options["user"])
        except User.DoesNotExist:
            raise CommandError(f"No user named {options['user']!r}.") from None
        models = [m.strip() for m in options["models"].split(",") if m.strip()]
        _, plain = api_key_create(
            owner=owner,
            name=options["name"],
            allowed_models=models,
            requests_per_minute=options["rpm"],
        )
        self.stdout.write(plain)
