"""Writes on the ledger: submitting, starting, finishing a prompt."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import F, Field
from django.db.models.functions import Greatest
from django.utils import timezone
from rq import Retry
from rq.job import JobStatus
from rq.utils import now

from apps.core import clients
from apps.gateway import cache, coalescing, delivery, fairness, queues
from apps.gateway.admission import Principal, admission_lock, admit
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest
from apps.gateway.runs import PROCESS_REQUEST_JOB

Status = PromptRequest.Status


def request_submit(
    *,
    principal: Principal,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    source: str = PromptRequest.Source.CHAT,
    request_id: uuid.UUID | None = None,
    queue: str | None = None,
    bypass_cache: bool = False,
    cached: cache.CachedAnswer | None = None,
    looked_up: bool = False,
    kind: str = PromptRequest.Kind.CHAT,
) -> PromptRequest:
    """Admit a prompt (or raise ``Rejection``) and record it in the ledger. Then:

    * **hit** — the same request was answered before: the row is final at once, with the
      stored answer (the caller replays it as a stream); no job, no backend call;
    * **coalesced** — the same request is in flight: once the row is committed it follows
      that one (``apps.gateway.coalescing``); no job;
    * **miss** — it is enqueued once the row is committed.

    Enqueueing after commit means a worker never sees a job whose row it cannot load,
    and a rolled-back submission leaves no job behind. ``cached`` is the answer the caller
    already found for this very request (``selectors.cached_answer``), so a hit is not
    looked up twice — nor turned into a miss by an answer expiring in between; with
    ``looked_up`` and no ``cached``, the caller found none (an answer stored since is
    still found: joining the in-flight set checks for it).
    """
    params = params or {}
    key = cache.cache_key(
        alias=model,
        messages=messages,
        params=params,
        owner_id=principal.user_id,
        bypass=bypass_cache,
        kind=kind,
    )
    hit = cached if cached is not None or looked_up or not key else cache.lookup(key)
    # Counted and recorded as one step where a cap on requests at once applies.
    with admission_lock(principal, model=model):
        # A hit queues nothing: only the limits on the person and the key apply to it.
        admit(principal, model=model, queues=hit is None, cache_key=key or "")
        fields: dict[str, Any] = {
            "id": request_id or uuid.uuid4(),
            "owner_id": principal.user_id,
            "model": model,
            "messages": messages,
            "params": params,
            "source": source,
            "kind": kind,
            "cache_key": key or "",
            "api_key_id": principal.key.id if principal.key else None,
        }
        if hit is not None:
            now = timezone.now()
            request = PromptRequest.objects.create(
                **fields,
                status=Status.DONE,
                cache_outcome=PromptRequest.CacheOutcome.HIT,
                answer=hit.answer,
                extra=hit.extra,
                backend_id=hit.backend_id,
                prompt_tokens=hit.prompt_tokens,
                completion_tokens=hit.completion_tokens,
                started_at=now,
                first_token_at=now,
                finished_at=now,
            )
            cache.count("hit", saved=hit)
            recorder.request(
                outcome="hit",
                model=model,
                latency=0.0,
                ttft=0.0,
                tokens_in=hit.prompt_tokens,
                tokens_out=hit.completion_tokens,
            )
            return request
        request = PromptRequest.objects.create(**fields)
        queue_name = queue or settings.BARISTA_QUEUES[0]

        def follow_or_enqueue() -> None:
            connection = clients.sync_redis()
            if key:
                leader = coalescing.join(connection, cache_key=key, request_id=str(request.id))
                if leader == coalescing.CACHED and _answer_from_cache(request, key):
                    return
                if leader is not None and leader != coalescing.CACHED:
                    PromptRequest.objects.filter(id=request.id).update(
                        coalesced_with=leader, cache_outcome=PromptRequest.CacheOutcome.COALESCED
                    )
                    cache.count("coalesced")
                    return
            cache.count("miss")
            request_enqueue(
                request_id=request.id,
                owner_id=principal.user_id,
                api_key_id=request.api_key_id,
                queue_name=queue_name,
            )

        transaction.on_commit(follow_or_enqueue)
        return request


def _answer_from_cache(request: PromptRequest, key: str) -> bool:
    """The answer was stored between this request's lookup and its commit (its leader
    finished meanwhile): record it as a hit and replay it to the asker's group."""
    hit = cache.lookup(key)
    if hit is None:
        return False  # expired in the meantime: ask the backend after all
    recorded = request_complete_many(
        completions=[
            Completion(
                request_id=str(request.id),
                answer=hit.answer,
                backend_id=hit.backend_id,
                first_token_at=timezone.now(),
                prompt_tokens=hit.prompt_tokens,
                completion_tokens=hit.completion_tokens,
                cache_outcome=PromptRequest.CacheOutcome.HIT,
                extra=hit.extra,
            )
        ]
    )
    cache.count("hit", saved=hit)
    recorder.request(outcome="hit", model=request.model, latency=0.0, ttft=0.0)
    if recorded.get(request_key(request.id)):
        row = PromptRequest.objects.select_related("backend").get(id=request.id)
        for event in delivery.replay_events(row):
            async_to_sync(delivery.push)(request_id=row.id, owner_id=row.owner_id, event=event)
    return True


def request_enqueue(
    *,
    request_id: uuid.UUID | str,
    owner_id: int,
    api_key_id: int | None = None,
    queue_name: str | None = None,
    attempts: int = 0,
) -> None:
    """Give the prompt a job, in its owner's next turn in the queue's fair lane
    (``apps.gateway.fairness``) — and within the owner's, in its API key's (or the chat
    page's) turn among their sources. ``attempts``: how many times a worker already started it
    (the ledger's count) — the job's retries are what is left of BARISTA_JOB_RETRIES."""
    retries = max(0, settings.BARISTA_JOB_RETRIES - attempts)
    queue = queues.queue(queue_name or settings.BARISTA_QUEUES[0])
    job = queue.create_job(
        # By name: the job module imports the pipeline, which imports these services.
        PROCESS_REQUEST_JOB,
        args=(str(request_id),),
        job_id=str(request_id),
        timeout=settings.BARISTA_JOB_TIMEOUT,
        result_ttl=60,
        failure_ttl=queues.ENDED_JOB_TTL,
        # Re-run only when a worker dies holding the job (RQ's abandoned-job cleanup), at
        # the front of the queue: it already waited its turn. The job function records
        # backend failures itself and never raises for them.
        retry=Retry(max=retries, enqueue_at_front=True) if retries else None,
    )
    # As RQ enqueues a job, but into the fair lane rather than the queue's list: its
    # records and its place in line in one transaction, one round trip.
    job.origin, job.enqueued_at = queue.name, now()
    with queue.connection.pipeline() as pipe:
        job.set_status(JobStatus.QUEUED, pipeline=pipe)
        job.save(pipeline=pipe)
        pushed = fairness.push_into(
            pipe,
            queue.connection,
            queue_name=queue.name,
            job_id=job.id,
            person=owner_id,
            source=api_key_id or "",
        )
        replies = pipe.execute(raise_on_error=False)
    for reply in replies[:-1]:
        if isinstance(reply, Exception):
            raise reply
    pushed(replies[-1])  # (a script Redis had forgotten is loaded and run again here)


def request_hand_over(*, leader_id: uuid.UUID | str, cache_key: str) -> str | None:
    """The leader will not answer (it failed, or was cancelled before it ran): its oldest
    follower leads now and gets a job; the others follow the new leader. Returns the new
    leader's id, or None when no one was following."""
    chain = coalescing.hand_over(
        clients.sync_redis(), cache_key=cache_key, leader_id=request_key(leader_id)
    )
    if not chain:
        return None
    new_leader, *rest = chain
    PromptRequest.objects.filter(id=new_leader).update(
        coalesced_with=None, cache_outcome=PromptRequest.CacheOutcome.MISS
    )
    if rest:
        PromptRequest.objects.filter(id__in=rest).update(coalesced_with=new_leader)
    row = PromptRequest.objects.only("owner_id", "api_key_id", "source").get(id=new_leader)
    request_enqueue(
        request_id=new_leader,
        owner_id=row.owner_id,
        api_key_id=row.api_key_id,
        queue_name=queue_for(source=row.source),
    )
    return new_leader


def request_key(request_id: uuid.UUID | str) -> str:
    return str(uuid.UUID(str(request_id)))


@transaction.atomic
def request_start_many(*, request_ids: list[str]) -> dict[str, tuple[PromptRequest, bool] | None]:
    """Mark prompts running, in one transaction. For each id: None when the row is already
    final (cancelled, or answered by an earlier run) and the caller must not call a
    backend; else the row and whether this is a re-run of a prompt whose earlier run may
    have shown tokens."""
    keys = [request_key(request_id) for request_id in request_ids]
    rows = {
        str(row.id): row
        for row in PromptRequest.objects.select_for_update().filter(id__in=keys).pending()
    }
    started_at = timezone.now()
    result: dict[str, tuple[PromptRequest, bool] | None] = {}
    for key in keys:
        row = rows.get(key)
        if row is None:
            result[key] = None
            continue
        result[key] = (row, row.started_at is not None)
        row.status, row.started_at, row.first_token_at = Status.RUNNING, started_at, None
        row.attempts += 1
    # Every row gets the same values: one UPDATE, not bulk_update's CASE per row.
    PromptRequest.objects.filter(id__in=list(rows)).update(
        status=Status.RUNNING,
        started_at=started_at,
        first_token_at=None,
        attempts=F("attempts") + 1,
    )
    return result


def request_requeue(*, request_id: uuid.UUID | str) -> None:
    """The worker gave the prompt back (it is shutting down, or Redis went away mid-answer):
    it waits again, and this start does not count against its retries."""
    PromptRequest.objects.filter(id=request_id, status=Status.RUNNING).update(
        status=Status.QUEUED, first_token_at=None, attempts=Greatest(F("attempts") - 1, 0)
    )


def request_keep_stopped(*, request_id: uuid.UUID | str, answer: str) -> None:
    """Its owner stopped the answer while it was being written: what had arrived stays
    with the cancelled row, so the conversation shows it (marked stopped) after a reload
    and sends it as part of the history, as the page showed it."""
    PromptRequest.objects.filter(id=request_id, status=Status.CANCELLED, answer="").update(
        answer=answer
    )


def queue_for(*, source: str) -> str:
    """The queue a prompt from this door waits in: API traffic behind chat prompts."""
    if source == PromptRequest.Source.API:
        return settings.BARISTA_API_QUEUE
    return settings.BARISTA_QUEUES[0]


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    answer: str
    backend_id: int | None
    first_token_at: datetime.datetime | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cache_outcome: str = PromptRequest.CacheOutcome.MISS
    extra: dict[str, Any] = field(default_factory=dict)


# What recording an answer writes, in this order (``_record_answers``).
ANSWER_FIELDS = (
    "status",
    "answer",
    "extra",
    "backend",
    "first_token_at",
    "prompt_tokens",
    "completion_tokens",
    "cache_outcome",
    "finished_at",
)


@transaction.atomic
def request_complete_many(*, completions: list[Completion]) -> dict[str, bool]:
    """Record final answers, each exactly once, in one transaction. For each request: False
    if it was already final (a duplicate run, or cancelled meanwhile) and its answer is
    discarded. Conversations read answers from these rows (``apps.chat.selectors``)."""
    keys = [request_key(c.request_id) for c in completions]
    # Only the status is read: the rows' messages and answers stay in the database.
    statuses = {
        str(row_id): status
        for row_id, status in PromptRequest.objects.select_for_update()
        .filter(id__in=keys)
        .values_list("id", "status")
    }
    finished_at = timezone.now()
    recorded: list[tuple[str, Completion]] = []
    result: dict[str, bool] = {}
    for key, completion in zip(keys, completions, strict=True):
        status = statuses.get(key)
        if status is None or status in PromptRequest.FINAL_STATUSES:
            result[key] = False
            continue
        statuses[key] = Status.DONE  # a second completion in one batch sees it final
        recorded.append((key, completion))
        result[key] = True
    _record_answers(recorded, finished_at)
    return result


def _record_answers(recorded: list[tuple[str, Completion]], finished_at: datetime.datetime) -> None:
    """One UPDATE statement run for every answer (``executemany``). ``bulk_update`` built a
    CASE per field and row, and compiling it was most of the worker's database time."""
    if not recorded:
        return
    meta = PromptRequest._meta
    fields = [f for f in map(meta.get_field, ANSWER_FIELDS) if isinstance(f, Field)]
    pk = meta.pk
    assert pk is not None and len(fields) == len(ANSWER_FIELDS)
    connection = connections[router.db_for_write(PromptRequest)]
    quote = connection.ops.quote_name
    columns = ", ".join(f"{quote(str(f.column))} = %s" for f in fields)
    # Identifiers from the model, quoted; every value a parameter.
    sql = f"UPDATE {quote(meta.db_table)} SET {columns} WHERE {quote(str(pk.column))} = %s"  # noqa: S608  # nosec B608
    rows = []
    for key, c in recorded:
        values = (
            Status.DONE,
            c.answer,
            c.extra,
            c.backend_id,
            c.first_token_at,
            c.prompt_tokens,
            c.completion_tokens,
            c.cache_outcome,
            finished_at,
        )
        prepared = [f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)]
        rows.append([*prepared, pk.get_db_prep_value(uuid.UUID(key), connection)])
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


@transaction.atomic
def request_fail(*, request_id: uuid.UUID | str, error: str) -> bool:
    request = PromptRequest.objects.select_for_update().get(id=request_id)
    if request.is_final:
        return False
    request.status = Status.FAILED
    request.error = error
    request.finished_at = timezone.now()
    request.save(update_fields=["status", "error", "finished_at"])
    return True
