from django.urls import path

from apps.console import views

app_name = "console"
urlpatterns = [
    path("", views.overview, name="home"),
    path("queues/", views.queue_list, name="queues"),
    path("queues/<str:name>/pause/", views.queue_pause, name="queue-pause"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<str:job_id>/", views.job_action, name="job-action"),
    path("workers/", views.worker_list, name="workers"),
    path("workers/action/", views.worker_action, name="worker-action"),
    path("backends/", views.backend_list, name="backends"),
    path("backends/live.json", views.backend_live, name="backends-live"),
    path("backends/add/", views.backend_edit, name="backend-add"),
    path("backends/<int:pk>/", views.backend_edit, name="backend-edit"),
    path("backends/<int:pk>/state/", views.backend_set_state, name="backend-state"),
    path("metrics/", views.metrics_page, name="metrics"),
    path("cache/", views.cache_overview, name="cache"),
    path("cache/flush/", views.cache_flush, name="cache-flush"),
    path("keys/", views.key_list, name="keys"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="key-revoke"),
    path("audit/", views.audit_list, name="audit"),
]
