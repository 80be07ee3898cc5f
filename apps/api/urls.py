from django.urls import path

from apps.api import views

app_name = "api"
urlpatterns = [
    path("", views.key_list, name="keys"),
    path("<int:pk>/revoke/", views.key_revoke, name="revoke"),
]
