from __future__ import annotations

from typing import Any

from django import forms

from apps.backends.models import Backend
from apps.backends.validators import key_variable_refusal, origin


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
            "accepts_images",
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
        variable, base_url = cleaned.get("api_key_env"), cleaned.get("base_url")
        if variable and base_url and (refusal := key_variable_refusal(variable, base_url)):
            self.add_error("api_key_env", refusal)
        self._keep_the_key_where_it_was_saved_for(cleaned)
        return cleaned

    def _keep_the_key_where_it_was_saved_for(self, cleaned: dict[str, Any]) -> None:
        """A stored key goes only to the server it was saved for: with the base URL's
        scheme, host or port changed, the key must be typed again (or removed), for a
        test and for a save alike — else whoever edits the URL could have the key sent to
        a server of their own."""
        saved = self.instance.pk is not None and self.instance.api_key_encrypted
        new_url = cleaned.get("base_url")
        if not saved or not new_url or cleaned.get("api_key") or cleaned.get("clear_api_key"):
            return
        if origin(new_url) != origin(self.initial.get("base_url", "")):
            self.add_error(
                "api_key",
                "The URL now points at another server (scheme, host or port): type the "
                "API key again, or tick “Remove the stored key”. A stored key is only "
                "sent to the server it was saved for.",
            )

    @property
    def change_summary(self) -> str:
        """What a save changes, for the audit log: field names, old and new values of
        where requests go and which key variable they carry, and what happens to the
        stored key (never the key itself)."""
        changed = []
        for name in self.changed_data:
            if name in ("api_key", "clear_api_key"):
                continue
            if name in AUDITED_VALUES and self.instance.pk is not None:
                old = self.initial.get(name) or "—"
                changed.append(f"{name}: {old} → {self.cleaned_data.get(name) or '—'}")
            else:
                changed.append(name)
        if self.cleaned_data.get("clear_api_key"):
            changed.append("key removed")
        elif self.cleaned_data.get("api_key"):
            changed.append("key replaced")
        return ", ".join(changed)


# Fields whose old and new values the audit log keeps: where a backend's requests (and its
# key) go, and under which alias and state it serves.
AUDITED_VALUES = ("base_url", "api_key_env", "alias", "state", "share_answers")
