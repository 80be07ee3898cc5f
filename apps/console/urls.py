from django.urls import path

from apps.console.views import access, backends, operations

app_name = "console"
urlpatterns = [
    path("", operations.overview, name="home"),
    path("queues/", operations.queue_list, name="queues"),
    path("queues/<str:name>/pause/", operations.queue_pause, name="queue-pause"),
    path("jobs/", operations.job_list, name="jobs"),
    path("jobs/<str:job_id>/", operations.job_action, name="job-action"),
    path("workers/", operations.worker_list, name="workers"),
    path("workers/action/", operations.worker_action, name="worker-action"),
    path("backends/", backends.backend_list, name="backends"),
    path("backends/live.json", backends.backend_live, name="backends-live"),
    path("backends/add/", backends.backend_edit, name="backend-add"),
    path("backends/<int:pk>/", backends.backend_edit, name="backend-edit"),
    path("backends/<int:pk>/state/", backends.backend_set_state, name="backend-state"),
    path("metrics/", operations.metrics_page, name="metrics"),
    path("cache/", operations.cache_overview, name="cache"),
    path("cache/flush/", operations.cache_flush, name="cache-flush"),
    path("keys/", access.key_list, name="keys"),
    path("keys/<int:pk>/revoke/", access.key_revoke, name="key-revoke"),
    path("keys/limits/", access.person_limits, name="person-limits"),
    path("audit/", access.audit_list, name="audit"),
]
