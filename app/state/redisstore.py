"""Exactly-once claims and rate limits on Redis (SWITCHBOARD_REDIS_URL): every replica shares them.

Each operation is one Lua script, so it is atomic on the server (one Redis, or a primary
with replicas; not Redis Cluster: a claim's keys name unrelated ids (webhook, call, SIP
dialog), which no hash tag short of one for every key, one slot for all, could put in one
slot. Every key a script touches is passed in KEYS, so a cluster refuses it (CROSSSLOT:
StateUnavailable, nothing acted on) rather than running it on part of them). Times are the
Redis server's clock (`TIME`), the one clock every replica sees. `claim_acting` is one
script too: the claim, the dialog kept for this API and `acting`, in one round trip.

Keys, under a prefix (`switchboard:` by default):

- `claim:<key>`  a hash {claim_id, owner, phase, lease, context, status, body,
  with_claim (an `acting` claim_acting wrote: see _RELEASE)}; it expires with the
  horizon. `lease` (ms) is renewed every third of the lease by the process holding the
  claim; a replica that dies releases nothing: its lease runs out and the next delivery
  takes over (app.state.claims).
- `mark:<key>`  a request for this key may have taken effect (no fallback after it).
- `rate:<route>:<caller>`  a list of the caller's last `calls` call times (ms), newest
  first, expiring a window after the newest; `verdict:<call_id>` the verdict a call got
  (`verdict:<dialog>><api>`: one left for the other event of its INVITE, taken once).

Every command has a timeout (SWITCHBOARD_STATE_TIMEOUT_SECONDS), also bounded by the
call's deadline; a Redis that does not answer is StateUnavailable, and the webhook is
answered 503 without acting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from app.rules import RateLimit
from app.state.claims import (
    IN_PROGRESS,
    Answer,
    ClaimLost,
    Plan,
    StateUnavailable,
    Ticket,
    new_claim_id,
    new_owner_id,
    poll_until,
    wait_for_answer,
)
from app.state.ratelimit import Twin
from app.state.redis import RedisUnavailable, check

logger = logging.getLogger("switchboard.state")

PREFIX: Final = "switchboard:"
MAX_UNFINISHED: Final = 10_000

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The claim of KEYS[1..n] (their marks: KEYS[n+1..2n]): {'answer', status, body},
# {'busy', claim_id} or {'ticket', phase, context or '', uncertain}.
_CLAIM_STEP: Final = """
local function claim(n, claim_id, owner, lease_ms, horizon_ms)
  local rows = {}
  for i = 1, n do
    rows[i] = redis.call('HMGET', KEYS[i], 'phase', 'lease', 'status', 'body', 'context',
                         'claim_id')
  end
  for i = 1, n do
    if rows[i][1] == 'done' then return {'answer', rows[i][3], rows[i][4]} end
  end
  for i = 1, n do
    if rows[i][1] and tonumber(rows[i][2]) > now then return {'busy', rows[i][6]} end
  end
  local context = false
  for i = 1, n do
    if rows[i][1] == 'acting' then context = rows[i][5] break end
  end
  local phase = 'claimed'
  if context then phase = 'acting' end
  local lease = string.format('%d', now + tonumber(lease_ms))
  for i = 1, n do
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'claim_id', claim_id, 'owner', owner, 'phase', phase,
               'lease', lease)
    if context then redis.call('HSET', KEYS[i], 'context', context) end
    redis.call('PEXPIRE', KEYS[i], horizon_ms)
  end
  local uncertain = 0
  for i = n + 1, 2 * n do
    if redis.call('EXISTS', KEYS[i]) == 1 then uncertain = 1 end
  end
  return {'ticket', phase, context or '', uncertain}
end
"""

# KEYS: n claim keys, then their n mark keys. ARGV: n, claim_id, owner, lease_ms, horizon_ms
_CLAIM: Final = (
    _NOW + _CLAIM_STEP + "return claim(tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5])"
)

# keep_first of one key: what a claim of it, then a remembered finish, did in two trips.
# {status, body, 1 when this answer was kept now}, or false while an unfinished claim
# (of a replica of an earlier version, or a test's) holds the key.
_KEEP_STEP: Final = """
local function keep_first(key, claim_id, owner, lease_ms, status, body, horizon_ms)
  local row = redis.call('HMGET', key, 'phase', 'lease', 'status', 'body')
  if row[1] == 'done' then return {row[3], row[4], 0} end
  if row[1] and tonumber(row[2]) > now then return false end
  redis.call('DEL', key)
  redis.call('HSET', key, 'claim_id', claim_id, 'owner', owner, 'phase', 'done',
             'lease', string.format('%d', now + tonumber(lease_ms)), 'status', status,
             'body', body)
  redis.call('PEXPIRE', key, horizon_ms)
  return {status, body, 1}
end
"""

# KEYS: the key. ARGV: claim_id, owner, lease_ms, status, body, horizon_ms
_KEEP_FIRST: Final = (
    _NOW
    + _KEEP_STEP
    + "return keep_first(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])"
)

# `acting` of the claim on KEYS[1..n]: 0 when it no longer holds them (what acting() checks).
_ACTING_STEP: Final = """
local function acting(n, claim_id, context, lease_ms)
  for i = 1, n do
    local h = redis.call('HMGET', KEYS[i], 'claim_id', 'phase')
    if h[1] ~= claim_id or h[2] ~= 'claimed' then return 0 end
  end
  local lease = string.format('%d', now + tonumber(lease_ms))
  for i = 1, n do
    redis.call('HSET', KEYS[i], 'phase', 'acting', 'context', context, 'lease', lease)
  end
  return 1
end
"""

# claim(), then for a ticket that is not an orphan's: keep_first of the dialog (KEYS[2n+1],
# when given) with this API's answer, then acting() when this API handles the call. The
# ticket comes with (the dialog's kept body or '' while a claim holds it, acting written).
# `with_claim` marks an `acting` nothing was sent for unless the ticket reached its caller:
# _RELEASE frees it when the reply was lost (an orphan's `acting` it leaves to its lease).
# KEYS: n claim keys, their n mark keys, [the dialog's claim key].
# ARGV: n, claim_id, owner, lease_ms, horizon_ms, api, status, body (this API's answer
# for the dialog), the dialog's claim_id, context ('': none, a dry run).
_CLAIM_ACTING: Final = (
    _NOW
    + _CLAIM_STEP
    + _KEEP_STEP
    + _ACTING_STEP
    + """
local n = tonumber(ARGV[1])
local got = claim(n, ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if got[1] ~= 'ticket' or got[2] == 'acting' then return got end
local kept = {ARGV[7], ARGV[8], 1}
if KEYS[2 * n + 1] then
  kept = keep_first(KEYS[2 * n + 1], ARGV[9], ARGV[3], ARGV[4], ARGV[7], ARGV[8], ARGV[5])
end
local acted = 0
if kept and ARGV[10] ~= '' then
  local ok, answer = pcall(cjson.decode, kept[2])
  if ok and type(answer) == 'table' and answer['api'] == ARGV[6] then
    acted = acting(n, ARGV[2], ARGV[10], ARGV[4])
    if acted == 1 then
      for i = 1, n do redis.call('HSET', KEYS[i], 'with_claim', '1') end
    end
  end
end
got[5] = kept and kept[2] or ''
got[6] = acted
return got
"""
)

# A claim_acting whose caller did not get the reply (a timeout, a cancellation): frees
# its keys when they are still `claimed`, or in the `acting` it wrote itself (nothing was
# sent); an orphan's `acting` it took over stays (its lease runs out: an orphan again).
# KEYS: the claim keys. ARGV: claim_id.
_RELEASE: Final = """
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'claim_id', 'phase', 'with_claim')
  if h[1] == ARGV[1] and (h[2] == 'claimed' or (h[2] == 'acting' and h[3] == '1')) then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""

# KEYS: the claim keys. ARGV: claim_id, context, lease_ms
_ACTING: Final = _NOW + _ACTING_STEP + "return acting(#KEYS, ARGV[1], ARGV[2], ARGV[3])"

# KEYS: n claim keys, then their n mark keys.
# ARGV: n, claim_id, remember, uncertain, status, body, horizon_ms
_FINISH: Final = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('HGET', KEYS[i], 'claim_id') == ARGV[2] then
    if ARGV[3] == '1' then
      redis.call('HSET', KEYS[i], 'phase', 'done', 'status', ARGV[5], 'body', ARGV[6])
      redis.call('HDEL', KEYS[i], 'context')
      redis.call('PEXPIRE', KEYS[i], ARGV[7])
    else
      redis.call('DEL', KEYS[i])
    end
  end
  if ARGV[4] == '1' then redis.call('SET', KEYS[n + i], '1', 'PX', ARGV[7]) end
end
return 1
"""

# KEYS: claim keys. ARGV: lease_ms, then the claim id of each key.
_RENEW: Final = (
    _NOW
    + """
local lease = string.format('%d', now + tonumber(ARGV[1]))
local renewed = 0
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'claim_id', 'phase')
  if h[1] == ARGV[i + 1] and h[2] ~= 'done' then
    redis.call('HSET', KEYS[i], 'lease', lease)
    renewed = renewed + 1
  end
end
return renewed
"""
)

# KEYS: the caller's hits list, [the call's verdict, [the verdict the other event of its
# INVITE left it (taken once), the one left for that event]]. ARGV: calls, per_ms, horizon_ms
_RATE: Final = (
    _NOW
    + """
if KEYS[2] then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then return tonumber(earlier) end
end
if KEYS[3] then
  local left = redis.call('GET', KEYS[3])
  if left then
    redis.call('DEL', KEYS[3])
    redis.call('SET', KEYS[2], left, 'PX', ARGV[3])
    return tonumber(left)
  end
end
local calls = tonumber(ARGV[1])
local over = 0
if redis.call('LLEN', KEYS[1]) >= calls then
  local oldest = tonumber(redis.call('LINDEX', KEYS[1], calls - 1))
  if now - oldest < tonumber(ARGV[2]) then over = 1 end
end
redis.call('LPUSH', KEYS[1], now)
redis.call('LTRIM', KEYS[1], 0, calls - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local allowed = 1 - over
if KEYS[2] then redis.call('SET', KEYS[2], allowed, 'PX', ARGV[3]) end
if KEYS[4] then redis.call('SET', KEYS[4], allowed, 'PX', ARGV[3]) end
return allowed
"""
)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), default=str, separators=(",", ":"))


class RedisState:
    """The Redis client of this process, its scripts, and the leases it renews."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        horizon_seconds: float,
        lease_seconds: float = 5.0,
        timeout: float = 0.5,
        prefix: str = PREFIX,
        target: str = "redis",
    ) -> None:
        self.client = client
        self.horizon_ms = _ms(horizon_seconds)
        self.lease_seconds = float(lease_seconds)
        self.lease_ms = _ms(lease_seconds)
        self.timeout = float(timeout)
        self.prefix = prefix
        self.owner = new_owner_id()
        self.target = target
        self.claim_script: AsyncScript = client.register_script(_CLAIM)
        self.claim_acting_script: AsyncScript = client.register_script(_CLAIM_ACTING)
        self.release_script: AsyncScript = client.register_script(_RELEASE)
        self.acting_script: AsyncScript = client.register_script(_ACTING)
        self.keep_first_script: AsyncScript = client.register_script(_KEEP_FIRST)
        self.finish_script: AsyncScript = client.register_script(_FINISH)
        self.renew_script: AsyncScript = client.register_script(_RENEW)
        self.rate_script: AsyncScript = client.register_script(_RATE)
        self.unfinished: dict[str, tuple[list[str], list[Any]]] = {}
        """Claim id -> the finish to write when Redis answers again."""
        self.unreleased: dict[str, list[str]] = {}
        """Claim id -> the claim keys of a claim_acting whose reply was lost (_RELEASE)."""
        self.held: dict[str, tuple[str, ...]] = {}
        """Claim id -> its Redis keys, for this process's claims in flight."""
        self._renewer: asyncio.Task[None] | None = None

    def claim_key(self, key: str) -> str:
        return f"{self.prefix}claim:{key}"

    def mark_key(self, key: str) -> str:
        return f"{self.prefix}mark:{key}"

    async def start(self) -> None:
        """RedisConfigError (the service must not start) if Redis refuses us; a Redis that
        does not answer yet only keeps the service not ready."""
        try:
            await check(self.client, timeout=max(self.timeout, 2.0))
        except RedisUnavailable as exc:
            logger.error(
                "Redis is unreachable: not ready until it answers",
                extra={"event": "state_unavailable", "store": "redis", "error": str(exc)},
            )
        else:
            logger.info(
                "state store connected",
                extra={"event": "state_opened", "store": "redis", "target": self.target},
            )
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name="switchboard-leases")

    async def stop(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            # wait(): the renewer's cancellation is not raised here, and a cancellation of
            # this task is (suppressing CancelledError around `await renewer` took it too).
            await asyncio.wait([renewer])
        # Once more, not left to leases: a claim_acting cancelled as the process stops
        # left an `acting` that a redelivery would answer 'uncertain' (SQLite's stop()
        # releases such a claim too). At most one timeout when Redis is away.
        await self._finish_late()
        await self.client.aclose()

    def finish_later(self, claim_id: str, keys: list[str], args: list[Any]) -> None:
        """A finish Redis did not take: kept (its lease renewed meanwhile) and written when
        Redis answers again, so a redelivery replays the answer instead of finding the
        claim orphaned. At most MAX_UNFINISHED; the oldest are given up (their leases
        then run out: a redelivery takes them over as after a crash)."""
        self.unfinished[claim_id] = (keys, args)
        while len(self.unfinished) > MAX_UNFINISHED:
            oldest = next(iter(self.unfinished))
            del self.unfinished[oldest]
            self.held.pop(oldest, None)

    def release_later(self, claim_id: str, keys: list[str]) -> None:
        """A claim_acting whose reply was lost (a timeout, a cancellation) may have written
        a claim in `acting` that nobody acts on: left to its lease, the redelivery would
        take it over as an orphan's and answer 'uncertain', the call never acted on. Freed
        (_RELEASE) after the finishes written late, within a third of the lease. Apart
        from them: an outage's failed claims (each queues one) never push a finish out.
        At most MAX_UNFINISHED; the oldest are given up (left to their leases)."""
        self.unreleased[claim_id] = keys
        while len(self.unreleased) > MAX_UNFINISHED:
            del self.unreleased[next(iter(self.unreleased))]

    async def _finish_late(self) -> None:
        task = asyncio.current_task()
        for claim_id, (keys, args) in list(self.unfinished.items()):
            if task is not None and task.cancelling():
                return  # stopping (see _renew_loop)
            try:
                await self.call(self.finish_script, keys, args, None)
            except StateUnavailable:
                return  # still away: the next round
            self.unfinished.pop(claim_id, None)
            self.held.pop(claim_id, None)
            logger.info(
                "answer stored after Redis came back",
                extra={"event": "state_finished_late", "store": "redis"},
            )
        for claim_id, keys in list(self.unreleased.items()):
            if task is not None and task.cancelling():
                return
            try:
                await self.call(self.release_script, keys, [claim_id], None)
            except StateUnavailable:
                return
            self.unreleased.pop(claim_id, None)
            logger.info(
                "claim released after its reply was lost",
                extra={"event": "claim_released", "store": "redis"},
            )

    async def call(
        self, script: AsyncScript, keys: list[str], args: list[Any], deadline: float | None
    ) -> Any:
        budget = self.timeout
        if deadline is not None:
            budget = min(budget, deadline - time.monotonic())
        if budget <= 0:
            raise StateUnavailable("no time left for the state store")
        try:
            async with asyncio.timeout(budget):
                return await script(keys=keys, args=args)
        except TimeoutError:
            raise StateUnavailable("Redis did not answer in time") from None
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"Redis: {exc}") from None

    async def _renew_loop(self) -> None:
        # Ends at a cancellation even when a library dropped it: Python 3.11's
        # asyncio.wait_for (redis-py bounds each socket write with it) returns the result
        # of a write that completed as the cancellation came, and a `while True` renewed
        # forever: stop(), or asyncio's cancellation of the tasks left when its loop
        # ends, waited for it without end. No one uncancels this task: cancelling() stays.
        task = asyncio.current_task()
        assert task is not None
        while not task.cancelling():
            await asyncio.sleep(self.lease_seconds / 3)
            await self._finish_late()
            if task.cancelling():
                return
            held = list(self.held.items())
            if not held:
                continue
            keys: list[str] = []
            ids: list[str] = []
            for claim_id, claim_keys in held:
                keys += claim_keys
                ids += [claim_id] * len(claim_keys)
            try:
                await self.call(self.renew_script, keys, [self.lease_ms, *ids], None)
            except StateUnavailable as exc:
                logger.warning(
                    "claim leases not renewed",
                    extra={"event": "state_unavailable", "store": "redis", "error": str(exc)},
                )


class RedisClaimStore:
    """ClaimStore on Redis (see app.state.claims for the protocol)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._local: dict[str, asyncio.Future[Answer]] = {}

    @property
    def state(self) -> RedisState:
        return self._state

    async def open(self) -> None:
        await self._state.start()

    async def close(self) -> None:
        await self._state.stop()

    async def ping(self) -> None:
        try:
            await check(self._state.client, timeout=self._state.timeout)
        except Exception as exc:
            raise StateUnavailable(str(exc)) from None

    def _keys(self, keys: tuple[str, ...]) -> list[str]:
        state = self._state
        return [state.claim_key(k) for k in keys] + [state.mark_key(k) for k in keys]

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        return await self._claim(keys, deadline, None)

    async def claim_acting(
        self, keys: tuple[str, ...], deadline: float, plan: Plan
    ) -> Ticket | Answer:
        """The claim, the dialog taken and `acting` in one script (_CLAIM_ACTING): one
        round trip before the request can leave, where the separate steps take three
        (the claim, keep_first, acting)."""
        return await self._claim(keys, deadline, plan)

    async def _claim(
        self, keys: tuple[str, ...], deadline: float, plan: Plan | None
    ) -> Ticket | Answer:
        state = self._state
        redis_keys = self._keys(keys)
        claim_keys = redis_keys[: len(keys)]
        script = state.claim_script
        plan_keys: list[str] = []
        plan_args: list[Any] = []
        if plan is not None:
            script = state.claim_acting_script
            if plan.dialog is not None:
                plan_keys = [state.claim_key(plan.dialog)]
            body = _dumps({"api": plan.api})
            context = "" if plan.context is None else _dumps(plan.context)
            # The dialog's claim id: what a claim of it in keep_first would have written.
            plan_args = [plan.api, 200, body, new_claim_id(), context]
        waited: list[Answer] = []

        async def attempt() -> Ticket | Answer | None:
            claim_id = new_claim_id()
            args = [len(keys), claim_id, state.owner, state.lease_ms, state.horizon_ms]
            # Known here before the round trip: a duplicate of this process whose 'busy'
            # reply is read before ours (another connection) waits for our answer. Found
            # only after, it polled Redis, and claimed afresh once an answer not kept (a
            # retry) freed the keys: one delivery's failure acted on twice at once.
            result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._local[claim_id] = result
            try:
                got = await state.call(script, redis_keys + plan_keys, args + plan_args, deadline)
            except BaseException:
                self._abandon(claim_id)
                if plan is not None:
                    # The script may have run: its `acting` is nobody's.
                    state.release_later(claim_id, claim_keys)
                raise
            kind = got[0]
            if kind != "ticket":
                self._abandon(claim_id)
            if kind == "answer":
                return Answer(int(got[1]), json.loads(got[2]))
            if kind == "ticket":
                phase, context, uncertain = got[1], got[2], bool(int(got[3]))
                state.held[claim_id] = tuple(claim_keys)
                orphan = json.loads(context) if phase == "acting" else None
                if orphan is not None:
                    logger.warning(
                        "claim taken over from a replica that died while acting",
                        extra={"event": "claim_orphaned", "keys": list(keys)},
                    )
                ticket = Ticket(keys, claim_id, uncertain=uncertain, orphan=orphan, result=result)
                if len(got) > 4:
                    # As DialogHandlers.take reads a kept answer; '': a claim holds the dialog.
                    ticket.handler = json.loads(got[4]).get("api") if got[4] else None
                    ticket.acting = ticket.sent = bool(int(got[5]))
                return ticket
            if got[1] == claim_id:
                # Our own claim: the script ran twice (redis-py sent it again after a
                # connection error). Nobody holds it: freed like a lost reply's.
                if plan is not None:
                    state.release_later(claim_id, claim_keys)
                return None
            local = self._local.get(got[1])
            if local is not None:
                waited.append(await wait_for_answer(local, deadline, time.monotonic))
                return waited[0]
            return None

        got = await poll_until(attempt, deadline)
        return got if got is not None else IN_PROGRESS

    def _abandon(self, claim_id: str) -> None:
        """A claim id this process asked for and does not hold: a duplicate waiting for it
        gets IN_PROGRESS (the delivery is retried), not a wait until its deadline."""
        result = self._local.pop(claim_id, None)
        if result is not None and not result.done():
            result.set_result(IN_PROGRESS)

    async def acting(
        self, ticket: Ticket, context: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        state = self._state
        text = _dumps(context)
        keys = [state.claim_key(k) for k in ticket.keys]
        # A lost answer (timeout) may leave the claim in `acting` with nothing sent: the
        # router then sends nothing and frees the claim; only a crash before that makes a
        # redelivery 'uncertain' when it could have acted (the safe side).
        done = await state.call(
            state.acting_script, keys, [ticket.claim_id, text, state.lease_ms], deadline
        )
        if not int(done):
            raise ClaimLost("the claim was taken over")

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        state = self._state
        body = _dumps(answer.body)
        args = [
            len(ticket.keys),
            ticket.claim_id,
            "1" if remember else "0",
            "1" if uncertain else "0",
            answer.status_code,
            body,
            state.horizon_ms,
        ]
        keys = self._keys(ticket.keys)
        try:
            await state.call(state.finish_script, keys, args, deadline)
        except StateUnavailable:
            state.finish_later(ticket.claim_id, keys, args)
            raise
        else:
            state.held.pop(ticket.claim_id, None)
        finally:
            local = self._local.pop(ticket.claim_id, None)
            if local is not None and not local.done():
                local.set_result(answer)

    async def keep_first(self, key: str, answer: Answer, deadline: float) -> Answer | None:
        """One script (_KEEP_FIRST), where a claim then a finish took two trips."""
        state = self._state
        keys = [state.claim_key(key)]
        args = [
            new_claim_id(),
            state.owner,
            state.lease_ms,
            answer.status_code,
            _dumps(answer.body),
            state.horizon_ms,
        ]

        async def attempt() -> Answer | None:
            got = await state.call(state.keep_first_script, keys, args, deadline)
            if got is None:
                return None  # held by an unfinished claim: its answer, or its lease running out
            if int(got[2]):
                return answer
            return Answer(int(got[0]), json.loads(got[1]))

        kept: Answer | None = await poll_until(attempt, deadline)
        return kept


class RedisRateLimiter:
    """Per-route, per-caller limits counted in Redis (every replica)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state

    async def allow(
        self,
        route: str,
        caller: str,
        limit: RateLimit,
        call_id: str = "",
        *,
        deadline: float | None = None,
        twin: Twin | None = None,
    ) -> bool:
        state = self._state
        keys = [f"{state.prefix}rate:{len(route)}:{route}:{caller}"]
        if call_id:
            keys.append(f"{state.prefix}verdict:{call_id}")
            if twin is not None:  # the router's events always have an id
                keys += (f"{state.prefix}verdict:{key}" for key in twin)
        args = [limit.calls, _ms(limit.per_seconds), state.horizon_ms]
        return bool(int(await state.call(state.rate_script, keys, args, deadline)))
