from __future__ import annotations

from typing import Any

from django import forms

from apps.backends.models import Backend


class BackendForm(forms.ModelForm[Backend]):
    """Add or edit a backend. The API key is write-only: it is never put back in the page.

    Validation only: ``services.backend_save`` stores the form's instance and its key.
    """

    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted and never shown again. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored key", required=False)

    class Meta:
        model = Backend
        fields = [
            "name",
            "alias",
            "kind",
            "base_url",
            "model_name",
            "tier",
            "weight",
            "max_concurrency",
            "timeout",
            "price_input_per_million",
            "price_output_per_million",
            "api_key_env",
            "drop_params",
            "share_answers",
            "state",
            "simulated",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Left out (a script posting the form as it was before kinds): a chat backend.
        self.fields["kind"].required = False

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or Backend.Kind.CHAT

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("api_key") and cleaned.get("api_key_env"):
            self.add_error("api_key", "Give either a key or a variable name, not both.")
        return cleaned

    @property
    def change_summary(self) -> str:
        """What a save changes, for the audit log: field names and what happens to the
        stored key (never the key itself)."""
        changed = [name for name in self.changed_data if name not in ("api_key", "clear_api_key")]
        if self.cleaned_data.get("clear_api_key"):
            changed.append("key removed")
        elif self.cleaned_data.get("api_key"):
            changed.append("key replaced")
        return ", ".join(changed)
