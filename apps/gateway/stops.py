"""Why the worker stopped a job: the job function sees it as ``CancelledError.args[0]``
(``apps.gateway.worker`` cancels, ``apps.gateway.pipeline`` reacts)."""

CANCEL_TIMEOUT = "timeout"
CANCEL_STOP = "stop"  # RQ's stop-job command: the person cancelled
CANCEL_REQUEUE = "requeue"  # shutting down: the job goes back to its queue
