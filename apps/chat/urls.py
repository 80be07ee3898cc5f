from django.urls import path

from apps.chat import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("c/<int:pk>/", views.home, name="conversation"),
    path("c/<int:pk>/rename/", views.conversation_rename, name="rename"),
    path("c/<int:pk>/delete/", views.conversation_delete, name="delete"),
    path("c/<int:pk>/system/", views.conversation_system_prompt, name="system"),
    path("c/<int:pk>/export.<str:fmt>", views.conversation_export, name="export"),
    path("models.json", views.model_health, name="models"),
]
