"""A worker holds the answers it has while the database is away, and records them when it
is back, instead of failing them (the cluster test restarts a real PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from apps.gateway import group_commit

# The writes are stand-ins; the hops to the database thread around them are Django's own.
pytestmark = pytest.mark.django_db(transaction=True)


def flaky(failures: int, calls: list[int]):
    def write(start_ids, completions):
        calls.append(len(start_ids))
        if len(calls) <= failures:
            raise OperationalError("the database system is shutting down")
        return {key: None for key in start_ids}, {}

    return write


async def test_a_batch_is_written_again_until_the_database_answers(monkeypatch, settings):
    settings.BARISTA_DATABASE_OUTAGE_WAIT = 30
    calls: list[int] = []
    monkeypatch.setattr(group_commit, "_write", flaky(3, calls))
    written = await group_commit._write_through_outages(["a", "b"], [])
    assert written == ({"a": None, "b": None}, {})
    assert calls == [2, 2, 2, 2]  # the same batch, three times refused, then written


async def test_past_the_wait_the_outage_is_raised(monkeypatch, settings):
    settings.BARISTA_DATABASE_OUTAGE_WAIT = 0.5
    calls: list[int] = []
    monkeypatch.setattr(group_commit, "_write", flaky(10_000, calls))
    with pytest.raises(OperationalError):
        await group_commit._write_through_outages(["a"], [])
    assert 2 <= len(calls) < 10


async def test_other_errors_are_not_retried(monkeypatch, settings):
    settings.BARISTA_DATABASE_OUTAGE_WAIT = 30
    calls: list[int] = []

    def broken(start_ids, completions):
        calls.append(1)
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr(group_commit, "_write", broken)
    with pytest.raises(ValueError):
        await group_commit._write_through_outages(["a"], [])
    assert calls == [1]
