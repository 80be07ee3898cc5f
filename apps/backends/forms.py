from __future__ import annotations

from typing import Any

from django import forms

from apps.backends.models import Backend


class BackendForm(forms.ModelForm[Backend]):
    """Add or edit a backend. The API key is write-only: it is never put back in the page."""

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
            "base_url",
            "model_name",
            "provider",
            "tier",
            "weight",
            "max_concurrency",
            "timeout",
            "price_input_per_million",
            "price_output_per_million",
            "api_key_env",
            "state",
            "simulated",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("api_key") and cleaned.get("api_key_env"):
            self.add_error("api_key", "Give either a key or a variable name, not both.")
        return cleaned

    @property
    def key_change(self) -> str:
        """What happens to the stored key, for the audit log (never the key itself)."""
        if self.cleaned_data.get("clear_api_key"):
            return "key removed"
        return "key replaced" if self.cleaned_data.get("api_key") else ""

    def save(self, commit: bool = True) -> Backend:
        backend = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            backend.api_key_encrypted = ""
        elif self.cleaned_data.get("api_key"):
            backend.set_api_key(self.cleaned_data["api_key"])
        if commit:
            backend.save()
        return backend
