"""The cluster of docs/deploy.md (cluster/harness.py), started once for the tests here.

These tests run only when selected (``-m cluster``, ``make cluster-test``): they need root
and ``ip netns``, and skip with the reason when this machine has neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis

from cluster.harness import Cluster, ClusterUnavailable, address, check_available


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        check_available()
    except ClusterUnavailable as exc:
        pytest.skip(f"no cluster on this machine: {exc}")
    started = Cluster()
    started.start()  # removes all it made if it fails
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def ledger(cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    """The cluster's PostgreSQL, read from outside like an operator would."""
    with psycopg.connect(
        host=address("db"), port=5432, user="barista", dbname="barista", autocommit=True
    ) as connection:
        yield connection


@pytest.fixture
def cluster_redis(cluster: Cluster) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    yield client
    client.close()


def sign_in(cluster: Cluster) -> httpx.Client:
    """Sign in through the load balancer with the login form, as a browser would."""
    client = httpx.Client(base_url=cluster.lb_url, timeout=30)
    page = client.get("/accounts/login/")
    page.raise_for_status()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the login page"
    answer = client.post(
        "/accounts/login/",
        data={
            "username": cluster.username,
            "password": cluster.password,
            "csrfmiddlewaretoken": token.group(1),
        },
        headers={"Referer": f"{cluster.lb_url}/accounts/login/"},
    )
    assert answer.status_code == 302, answer.text[:500]
    assert client.cookies.get("sessionid"), "signed in without a session cookie"
    return client
