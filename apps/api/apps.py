from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ApiConfig(AppConfig):
    name = "apps.api"
    label = "api"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        from apps.api.models import ApiKey, PersonLimits
        from apps.api.services import forget_keys

        for model in (ApiKey, PersonLimits, get_user_model()):
            post_save.connect(forget_keys, sender=model, dispatch_uid=f"api-keys-{model.__name__}")
            post_delete.connect(
                forget_keys, sender=model, dispatch_uid=f"api-keys-gone-{model.__name__}"
            )
