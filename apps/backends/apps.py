from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class BackendsConfig(AppConfig):
    name = "apps.backends"
    label = "backends"

    def ready(self) -> None:
        from apps.backends.enabled import enabled_backends
        from apps.backends.models import Backend

        def expire(**kwargs: object) -> None:
            enabled_backends.expire()

        post_save.connect(expire, sender=Backend, dispatch_uid="enabled-backends-save")
        post_delete.connect(expire, sender=Backend, dispatch_uid="enabled-backends-delete")
