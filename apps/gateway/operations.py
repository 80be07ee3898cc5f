"""What staff do to the queue machinery: pause a queue, suspend, resume or stop workers.

These speak RQ and Redis so that the console never has to: its views name an operation,
these functions know the keys and the commands.
"""

from __future__ import annotations

from rq import Worker
from rq.command import send_shutdown_command
from rq.suspension import is_suspended, resume, suspend

from apps.gateway import queues


def queue_pause(*, name: str, paused: bool) -> None:
    """Pause ``name`` (or resume it): workers take nothing from a paused queue."""
    queues.queue_pause(queues.connection(), name, paused=paused)


def workers_suspend() -> None:
    """Every worker finishes what it holds and takes nothing new until resumed."""
    suspend(queues.connection())


def workers_resume() -> None:
    resume(queues.connection())


def workers_suspended() -> bool:
    return bool(is_suspended(queues.connection()))


def worker_shutdown(*, name: str) -> bool:
    """Ask the worker ``name`` to finish its prompts and exit; False if none by that name runs."""
    redis = queues.connection()
    if name not in {worker.name for worker in Worker.all(connection=redis)}:
        return False
    send_shutdown_command(redis, name)
    return True
