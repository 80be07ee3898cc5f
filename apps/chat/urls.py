from django.urls import path

from apps.chat import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("c/<int:pk>/", views.home, name="conversation"),
]
