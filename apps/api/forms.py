from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from apps.api.models import ApiKey
from apps.api.services import api_key_create
from apps.backends.selectors import alias_list


class LimitFields(forms.Form):
    """Requests and tokens per minute and requests at once, blank for none. Bounded: a
    number past the database's integer was a server error (issue 18)."""

    requests_per_minute = forms.IntegerField(
        required=False, min_value=1, max_value=1_000_000, label="Requests/min"
    )
    tokens_per_minute = forms.IntegerField(
        required=False, min_value=1, max_value=1_000_000_000, label="Tokens/min"
    )
    max_concurrent = forms.IntegerField(
        required=False, min_value=1, max_value=100_000, label="At once"
    )


class ApiKeyForm(LimitFields):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. 'reporting script'.")
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to allow every model.",
    )

    field_order = ["name", "models"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        aliases = [str(entry["alias"]) for entry in alias_list()]
        self.fields["models"].choices = [(alias, alias) for alias in aliases]  # type: ignore[attr-defined]

    def create(self, owner: User) -> tuple[ApiKey, str]:
        """Make the key the form describes; returns it and its secret (shown once)."""
        data = self.cleaned_data
        return api_key_create(
            owner=owner,
            name=data["name"],
            allowed_models=data["models"],
            requests_per_minute=data["requests_per_minute"],
            tokens_per_minute=data["tokens_per_minute"],
            max_concurrent=data["max_concurrent"],
        )


class StaffApiKeyForm(ApiKeyForm):
    owner = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username")
    )

    field_order = ["owner", "name", "models"]


class PersonLimitsForm(LimitFields):
    """Staff's limits on all of one person's keys together (blank: none)."""

    owner = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"), label="Person"
    )

    field_order = ["owner"]
