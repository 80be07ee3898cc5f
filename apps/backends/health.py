"""Active health checks: every few seconds, one worker asks each backend ``GET /models``.

One worker of the fleet checks per interval, however many workers run (it takes the turn
with ``apps.core.turns.claim_turn``). What a check finds feeds the same live state as real
calls (``apps.backends.live``):

* a backend that does not answer, or answers an error, counts one failure toward its
  circuit breaker, so a dead backend is taken out before anyone's prompt finds it dead;
* a backend whose circuit is open, answering well, closes its circuit at once, whatever
  is left of its cool-down (the check was the probe): a backend that is back is used
  again within one check interval;
* when the backend publishes vLLM-style metrics on ``/metrics``
  (``vllm:num_requests_waiting``, ``vllm:gpu_cache_usage_perc``) they are kept beside the
  result and the balancer counts the backend's own queue in its score.

``check`` is also the console's "test connection" button.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from apps.backends import live
from apps.backends.models import Backend
from apps.core import egress

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckResult:
    up: bool
    ms: float
    message: str  # safe to show staff: never the URL's secrets or the key
    models: list[str] = field(default_factory=list)
    waiting: int = 0
    kv_cache: float = 0.0
    has_metrics: bool = False


def _root(base_url: str) -> str:
    """``http://host:port/v1`` → ``http://host:port`` (where vLLM serves ``/metrics``)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def check(
    client: httpx.AsyncClient,
    *,
    name: str,
    base_url: str,
    model_name: str,
    api_key: str = "",
    wait: float = 3.0,
) -> CheckResult:
    """Ask the backend which models it serves (and, if it says, how busy it is)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    try:
        response = await client.get(base_url.rstrip("/") + "/models", headers=headers, timeout=wait)
    except httpx.TimeoutException:
        return CheckResult(False, (time.monotonic() - started) * 1000, f"{name} timed out")
    except egress.AddressRefused as exc:  # never connected: say why (staff see the address)
        message = f"refused to call {name}: {exc.host} resolves to {exc.address}, {exc.reason}"
        if exc.reason == egress.PRIVATE:
            message += " (BARISTA_BACKENDS_ALLOW_PRIVATE is off)"
        return CheckResult(False, (time.monotonic() - started) * 1000, message)
    except httpx.HTTPError:
        return CheckResult(False, (time.monotonic() - started) * 1000, f"could not reach {name}")
    ms = (time.monotonic() - started) * 1000
    if response.status_code in (401, 403):
        return CheckResult(False, ms, f"{name} refused the API key (HTTP {response.status_code})")
    if response.status_code != 200:
        return CheckResult(False, ms, f"{name} answered HTTP {response.status_code}")
    try:
        models = [str(m.get("id")) for m in response.json().get("data", [])]
    except (ValueError, AttributeError):
        return CheckResult(False, ms, f"{name} did not answer with a model list")
    result = CheckResult(True, ms, f"{name} is up and serves {model_name}", models)
    if models and model_name not in models:
        result.message = f"{name} is up but does not list the model {model_name!r}"
    await _read_metrics(client, base_url, headers, wait, result)
    return result


async def _read_metrics(
    client: httpx.AsyncClient,
    base_url: str,
    headers: dict[str, str],
    wait: float,
    result: CheckResult,
) -> None:
    try:
        response = await client.get(_root(base_url) + "/metrics", headers=headers, timeout=wait)
        if response.status_code != 200:
            return
        families = list(text_string_to_metric_families(response.text))
    except (httpx.HTTPError, ValueError):
        return  # not vLLM, or not telling: the score simply goes without
    for family in families:
        values = [sample.value for sample in family.samples]
        if not values:
            continue
        if family.name == "vllm:num_requests_waiting":
            result.waiting, result.has_metrics = int(sum(values)), True
        elif family.name == "vllm:gpu_cache_usage_perc":
            result.kv_cache, result.has_metrics = float(max(values)), True


async def check_backend(client: httpx.AsyncClient, backend: Backend) -> CheckResult:
    return await check(
        client,
        name=backend.name,
        base_url=backend.base_url,
        model_name=backend.model_name,
        api_key=backend.api_key(),
        wait=min(backend.timeout, settings.BARISTA_HEALTH_TIMEOUT),
    )


async def check_all(client: httpx.AsyncClient, backends: list[Backend]) -> list[CheckResult]:
    """Check every backend at once and feed the results to the live state."""
    results = await asyncio.gather(*(check_backend(client, b) for b in backends))
    states = await live.snapshot([b.pk for b in backends])
    keep = settings.BARISTA_HEALTH_INTERVAL * 3
    for backend, result in zip(backends, results, strict=True):
        await live.record_health(
            backend.pk,
            up=result.up,
            ms=result.ms,
            error="" if result.up else result.message,
            waiting=result.waiting,
            kv_cache=result.kv_cache,
            keep=keep,
        )
        state = states[backend.pk]
        if not result.up:
            logger.warning("health check: %s", result.message)
            await live.record(backend.pk, ok=False)
        elif state.circuit == "open":
            # The check was the probe: a backend that answers is used again now, whatever
            # is left of its cool-down (which doubles with each opening, up to minutes).
            logger.info("health check: %s is back; closing its circuit", backend.name)
            await live.record(backend.pk, ok=True)
    return results
