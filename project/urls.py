from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.api import views as api_views
from apps.chat import views as chat_views
from apps.console import monitoring
from apps.console.prometheus import prometheus_metrics
from apps.core import signin

urlpatterns = [
    path("healthz", monitoring.healthz, name="healthz"),
    path("readyz", monitoring.readyz, name="readyz"),
    path("metrics", prometheus_metrics, name="metrics"),
    path("accounts/login/", signin.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", chat_views.signup, name="signup"),
    path("console/", include("apps.console.urls")),
    path("settings/", api_views.account_settings, name="settings"),
    path("settings/keys/", include("apps.api.urls")),
    # (No django-rq dashboard: the console covers its jobs and queues, audited, and its
    # pages read job data with RQ's default, pickling serializer.)
    path("admin/", admin.site.urls),
    path("", include("apps.chat.urls")),
]
