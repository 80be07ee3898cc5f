"""A backend's record of its calls (one hash per backend): the circuit breaker and the
peak-EWMA of time to first token."""

from __future__ import annotations

from django.conf import settings

from apps.backends.live.keys import stats_key
from apps.core import clients
from apps.core.scripts import LuaScript

TAU = 10.0  # seconds for the EWMA to forget

# Jumps up at once on a slow answer, decays back over TAU seconds as fast answers come in
# (Finagle's peak EWMA).
_OBSERVE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local sample = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'ttft'))
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
local value = sample
if current ~= nil and sample < current then
  local w = math.exp(-(now - at) / tonumber(ARGV[2]))
  value = current * w + sample * (1 - w)
end
redis.call('HSET', KEYS[1], 'ttft', tostring(value), 'at', tostring(now))
return tostring(value)
""")

# Outcome of one call. Opens the circuit after ARGV[2] consecutive failures, or when at
# least ARGV[4] calls in the current window (ARGV[3] s) failed at a rate of ARGV[5] or
# more; a failed probe re-opens it with a cool-down that doubles with each opening
# (ARGV[6] s base, ARGV[7] s cap); a success closes it. ARGV[8] is a Retry-After (s).
_RECORD = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local key = KEYS[1]
local ok = ARGV[1] == '1'
if ARGV[1] == '2' then
  -- "Too many requests": the backend is well, only full. Honour Retry-After; no failure.
  local retry_after = math.max(tonumber(ARGV[8]), 0.5)
  redis.call('HSET', key, 'not_before', tostring(now + retry_after))
  return redis.call('HGET', key, 'circuit') or 'closed'
end
local s = redis.call('HMGET', key, 'failures', 'circuit', 'window_at', 'calls', 'fails', 'openings')
local failures, circuit = tonumber(s[1] or '0'), s[2] or 'closed'
local window_at, calls, fails = tonumber(s[3] or '0'), tonumber(s[4] or '0'), tonumber(s[5] or '0')
local openings = tonumber(s[6] or '0')
if now - window_at > tonumber(ARGV[3]) then window_at, calls, fails = now, 0, 0 end
calls = calls + 1
if ok then
  failures = 0
  if circuit ~= 'closed' then circuit, openings = 'closed', math.max(0, openings - 1) end
else
  failures, fails = failures + 1, fails + 1
  local rate_bad = calls >= tonumber(ARGV[4]) and fails / calls >= tonumber(ARGV[5])
  if circuit == 'open' or failures >= tonumber(ARGV[2]) or rate_bad then
    if circuit ~= 'open' or now >= tonumber(redis.call('HGET', key, 'open_until') or '0') then
      openings = openings + 1
      local cool = math.min(tonumber(ARGV[7]), tonumber(ARGV[6]) * 2 ^ (openings - 1))
      redis.call('HSET', key, 'open_until', tostring(now + cool))
    end
    circuit = 'open'
  end
  local retry_after = tonumber(ARGV[8])
  if retry_after > 0 then redis.call('HSET', key, 'not_before', tostring(now + retry_after)) end
end
redis.call('HSET', key, 'failures', failures, 'circuit', circuit, 'window_at', tostring(window_at),
  'calls', calls, 'fails', fails, 'openings', openings)
redis.call('EXPIRE', key, 86400)
return circuit
""")


async def record(
    backend_id: int, *, ok: bool, retry_after: float = 0.0, overloaded: bool = False
) -> str:
    """Feed one call's outcome to the backend's circuit breaker; returns its state. An
    ``overloaded`` answer (HTTP 429) only keeps the backend out for its Retry-After."""
    state = await _RECORD.run(
        clients.live_redis(),
        [stats_key(backend_id)],
        [
            "2" if overloaded else "1" if ok else "0",
            settings.BARISTA_CIRCUIT_FAILURES,
            settings.BARISTA_CIRCUIT_WINDOW,
            settings.BARISTA_CIRCUIT_MIN_CALLS,
            settings.BARISTA_CIRCUIT_FAILURE_RATE,
            settings.BARISTA_CIRCUIT_COOLDOWN,
            settings.BARISTA_CIRCUIT_COOLDOWN_MAX,
            retry_after,
        ],
    )
    return state.decode() if isinstance(state, bytes) else str(state)


async def observe_ttft(backend_id: int, seconds: float) -> float:
    value = await _OBSERVE.run(clients.live_redis(), [stats_key(backend_id)], [seconds, TAU])
    return float(value)
