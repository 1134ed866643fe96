"""The registry of live calls: which replica holds each call's sideband, and what another
replica needs to carry the call on when that one dies.

One replica owns each live call. It registers the call when it starts handling it, renews
its lease with a heartbeat, and releases the call when it ends. A replica whose lease ran
out (it crashed, froze, or lost Redis for longer than the lease) loses the call: any
replica's takeover claims it atomically and re-attaches to it (its sideband joins the
existing call by id, its max duration runs to the same absolute deadline). A replica that
shuts down cleanly disowns its calls, so another takes them at its next heartbeat instead
of waiting for the lease.

The record is API-agnostic (`api` names the voice API: `realtime`, `live`...) and
serializable: the call's in-call features (transfer allowlist, keypad map, max duration...)
travel with it, so every replica can check a transfer against the allowlist.

Owners also answer control requests (hang up, transfer) relayed from the replica an
operator happened to reach: `ask` sends one to the owner and waits for its answer,
`serve` answers the ones sent to this replica.

`MemoryLiveCalls` serves one process (registries sharing one `MemoryHub` behave like
replicas on one Redis, for tests); `RedisLiveCalls` is shared by every replica. Leases are
timed by the Redis server's clock, so replicas' clocks may disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from app.rules.ruleset import CallFeatures, Destination, MaxDuration

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("switchboard.livecalls")

RECORD_VERSION: Final = 1
PREFIX: Final = "switchboard:{live}"
"""Every key shares the `{live}` hash tag: one slot, so the scripts also run on a cluster."""
TAKEOVER_BATCH: Final = 100
"""Calls one takeover claims at most (the rest at the next heartbeat, or by other replicas)."""
POLL_SECONDS: Final = 0.2
"""Longest read on a pub/sub connection (under any socket timeout the client has)."""


class LiveCallError(Exception):
    """The registry cannot be reached or answered nonsense."""


class NoAnswer:
    """`ask` found nobody to answer: the owner is gone (its process no longer listens)."""

    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Final = NoAnswer()


@dataclass(frozen=True, slots=True)
class LiveCall:
    call_id: str
    api: str
    """The voice API of the call (`realtime`, `live`...): which sideband to join."""
    started_at: float
    """Wall-clock time the call started (Unix seconds)."""
    features: CallFeatures
    deadline: float | None = None
    """Wall-clock time of the call's max duration: a replica that takes the call over runs
    the remaining time, not the whole limit again."""
    owner: str = ""
    """The replica holding the call (filled in when read)."""

    def encode(self) -> str:
        return json.dumps(
            {
                "v": RECORD_VERSION,
                "call_id": self.call_id,
                "api": self.api,
                "started_at": self.started_at,
                "deadline": self.deadline,
                "features": features_to_dict(self.features),
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | bytes, owner: str = "") -> LiveCall:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
                raise ValueError(f"unknown record version {data.get('v')!r}")
            deadline = data.get("deadline")
            return cls(
                call_id=str(data["call_id"]),
                api=str(data["api"]),
                started_at=float(data["started_at"]),
                features=features_from_dict(data["features"]),
                deadline=None if deadline is None else float(deadline),
                owner=owner,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LiveCallError(f"unreadable live call record: {exc}") from None


def features_to_dict(features: CallFeatures) -> dict[str, Any]:
    return {f.name: _plain(getattr(features, f.name)) for f in dataclasses.fields(features)}


def _plain(value: Any) -> Any:
    """JSON-ready: nested dataclasses as dicts, any Mapping (a read-only proxy too) as a dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def features_from_dict(data: Mapping[str, Any]) -> CallFeatures:
    """The inverse of `features_to_dict`; keys this version does not know are ignored."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(CallFeatures):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "transfers":
            value = {str(k): Destination(**v) for k, v in value.items()}
        elif f.name == "max_duration" and value is not None:
            value = MaxDuration(**value)
        elif f.name == "dtmf":
            value = {str(k): v for k, v in value.items()}
        values[f.name] = value
    return CallFeatures(**values)


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a heartbeat learnt about the calls it renewed (the others were renewed)."""

    lost: frozenset[str] = frozenset()
    """Held by another replica now: it took them over."""
    missing: frozenset[str] = frozenset()
    """Unknown to the registry (Redis lost its data, or the call was released elsewhere):
    the holder registers them again."""


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An operator's request for a call, relayed to the replica that owns it."""

    op: Literal["hangup", "transfer"]
    call_id: str
    destination: str | None = None

    def encode(self, reply_to: str) -> str:
        return json.dumps(
            {
                "op": self.op,
                "call_id": self.call_id,
                "destination": self.destination,
                "reply_to": reply_to,
            }
        )


Handler = Callable[[ControlRequest], Awaitable[str | None]]
"""Answers a relayed request: the outcome, or None when this replica does not hold the call."""


class LiveCallRegistry(Protocol):
    replica: str
    """This replica's id (the owner name it registers calls under)."""

    async def register(self, call: LiveCall) -> None:
        """This replica holds the call now (a new call, or one it took over)."""
        ...

    async def renew(self, call_ids: Collection[str]) -> Renewal:
        """Heartbeat: extend the leases of these calls; say which ones another replica
        holds now, and which ones the registry does not know."""
        ...

    async def release(self, call_id: str) -> None:
        """The call is over: forget it (only if this replica holds it)."""
        ...

    async def disown(self, call_id: str) -> None:
        """This replica leaves the call (shutting down): its lease ends now, so another
        replica takes it at its next heartbeat."""
        ...

    async def forget(self, call_id: str, owner: str) -> None:
        """The call is over, ended by this replica through the REST API for `owner`, which
        no longer answers (an operator's hang-up or transfer): forget it, so that no replica
        takes it over when `owner`'s lease runs out. Only while `owner` still holds it."""
        ...

    async def takeover(self) -> list[LiveCall]:
        """Claim every call whose lease ran out; the claimed calls are this replica's now.
        Each comes with `owner` set to the replica that held it until now."""
        ...

    async def get(self, call_id: str) -> LiveCall | None: ...

    async def calls(self) -> list[LiveCall]: ...

    async def ask(
        self, owner: str, request: ControlRequest, wait_seconds: float
    ) -> str | NoAnswer | None:
        """Relay a request to the replica `owner` and wait for its answer: the outcome, None
        when the owner does not hold the call, NO_ANSWER when no such replica listens.
        TimeoutError when it received the request and did not answer in time (it may
        still act on it)."""
        ...

    async def serve(self, handler: Handler) -> None:
        """Answer the requests relayed to this replica, until cancelled."""
        ...

    async def close(self) -> None: ...


def new_replica_id() -> str:
    import socket

    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


# --- one process ---------------------------------------------------------------------------


@dataclass
class _Entry:
    record: str
    owner: str
    expires: float


class MemoryHub:
    """What replicas share, in one process: the records and who answers requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self.handlers: dict[str, Handler] = {}


class MemoryLiveCalls:
    def __init__(self, replica: str, *, lease_seconds: float, hub: MemoryHub | None = None) -> None:
        self.replica = replica
        self.lease = lease_seconds
        self.hub = hub if hub is not None else MemoryHub()

    def _now(self) -> float:
        return self.hub.clock()

    async def register(self, call: LiveCall) -> None:
        self.hub.entries[call.call_id] = _Entry(
            call.encode(), self.replica, self._now() + self.lease
        )

    async def renew(self, call_ids: Collection[str]) -> Renewal:
        lost: set[str] = set()
        missing: set[str] = set()
        for call_id in call_ids:
            entry = self.hub.entries.get(call_id)
            if entry is None:
                missing.add(call_id)
            elif entry.owner != self.replica:
                lost.add(call_id)
            else:
                entry.expires = self._now() + self.lease
        return Renewal(frozenset(lost), frozenset(missing))

    async def release(self, call_id: str) -> None:
        entry = self.hub.entries.get(call_id)
        if entry is not None and entry.owner == self.replica:
            del self.hub.entries[call_id]

    async def disown(self, call_id: str) -> None:
        entry = self.hub.entries.get(call_id)
        if entry is not None and entry.owner == self.replica:
            entry.expires = 0.0

    async def forget(self, call_id: str, owner: str) -> None:
        entry = self.hub.entries.get(call_id)
        if entry is not None and entry.owner == owner:
            del self.hub.entries[call_id]

    async def takeover(self) -> list[LiveCall]:
        now = self._now()
        claimed: list[LiveCall] = []
        for entry in list(self.hub.entries.values()):
            if entry.expires <= now and len(claimed) < TAKEOVER_BATCH:
                claimed.append(LiveCall.decode(entry.record, entry.owner))
                entry.owner, entry.expires = self.replica, now + self.lease
        return claimed

    async def get(self, call_id: str) -> LiveCall | None:
        entry = self.hub.entries.get(call_id)
        return None if entry is None else LiveCall.decode(entry.record, entry.owner)

    async def calls(self) -> list[LiveCall]:
        return [LiveCall.decode(e.record, e.owner) for e in self.hub.entries.values()]

    async def ask(
        self, owner: str, request: ControlRequest, wait_seconds: float
    ) -> str | NoAnswer | None:
        handler = self.hub.handlers.get(owner)
        if handler is None:
            return NO_ANSWER
        # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation that
        # comes as the answer does.
        async with asyncio.timeout(wait_seconds):
            return await handler(request)

    async def serve(self, handler: Handler) -> None:
        self.hub.handlers[self.replica] = handler
        try:
            await asyncio.Event().wait()
        finally:
            if self.hub.handlers.get(self.replica) is handler:
                del self.hub.handlers[self.replica]

    async def close(self) -> None:
        return None


# --- Redis ---------------------------------------------------------------------------------

# KEYS: calls (hash id -> record), owners (hash id -> replica), leases (zset id -> expiry ms,
# Redis time). Lua scripts make each step atomic; leases use the server's clock (TIME).
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

_REGISTER = (
    _NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
)

# ARGV: replica, lease ms, ids...; returns {lost ids, missing ids}.
_RENEW = (
    _NOW
    + """
local lost, missing = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    table.insert(missing, id)
  elseif redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
  else
    table.insert(lost, id)
  end
end
return {lost, missing}
"""
)

_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

_DISOWN = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
"""

# ARGV: replica, lease ms, batch; returns id, record, previous owner, id, record...
_TAKEOVER = (
    _NOW
    + """
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local record = redis.call('HGET', KEYS[1], id)
  if record then
    local previous = redis.call('HGET', KEYS[2], id) or ''
    redis.call('HSET', KEYS[2], id, ARGV[1])
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, record)
    table.insert(out, previous)
  else
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return out
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _outcome(raw: bytes | str) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    outcome = data.get("outcome") if isinstance(data, dict) else None
    return outcome if isinstance(outcome, str) else None


class RedisLiveCalls:
    def __init__(
        self,
        client: Redis,
        replica: str,
        *,
        lease_seconds: float,
        prefix: str = PREFIX,
    ) -> None:
        # redis is imported by a deployment that has Redis only (0.3 s of CPU at each start).
        from redis.exceptions import RedisError

        self._lost: tuple[type[Exception], ...] = (RedisError, OSError)
        """What a lost or failing Redis raises."""
        self.client = client
        self.replica = replica
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.prefix = prefix
        self._keys = [f"{prefix}:calls", f"{prefix}:owners", f"{prefix}:leases"]
        self._register = client.register_script(_REGISTER)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._disown = client.register_script(_DISOWN)
        self._takeover = client.register_script(_TAKEOVER)

    def channel(self, replica: str) -> str:
        return f"{self.prefix}:control:{replica}"

    async def _run(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except self._lost as exc:
            raise LiveCallError(f"live calls: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def register(self, call: LiveCall) -> None:
        await self._run(
            "register",
            self._register(
                keys=self._keys, args=[call.call_id, call.encode(), self.replica, self.lease_ms]
            ),
        )

    async def renew(self, call_ids: Collection[str]) -> Renewal:
        if not call_ids:
            return Renewal()
        lost, missing = await self._run(
            "renew", self._renew(keys=self._keys, args=[self.replica, self.lease_ms, *call_ids])
        )
        return Renewal(frozenset(map(_text, lost)), frozenset(map(_text, missing)))

    async def release(self, call_id: str) -> None:
        await self._run("release", self._release(keys=self._keys, args=[call_id, self.replica]))

    async def disown(self, call_id: str) -> None:
        await self._run("disown", self._disown(keys=self._keys, args=[call_id, self.replica]))

    async def forget(self, call_id: str, owner: str) -> None:
        # A release on `owner`'s behalf: the same script, with its name.
        await self._run("forget", self._release(keys=self._keys, args=[call_id, owner]))

    async def takeover(self) -> list[LiveCall]:
        flat = await self._run(
            "takeover",
            self._takeover(keys=self._keys, args=[self.replica, self.lease_ms, TAKEOVER_BATCH]),
        )
        claimed: list[LiveCall] = []
        for i in range(0, len(flat), 3):
            try:
                claimed.append(LiveCall.decode(flat[i + 1], _text(flat[i + 2])))
            except LiveCallError:
                # Not ours to resume (a newer version's record?): say so, let it expire.
                logger.warning("unreadable live call record", extra={"call_id": _text(flat[i])})
                await self.release(_text(flat[i]))
        return claimed

    async def get(self, call_id: str) -> LiveCall | None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self._keys[0], call_id)
            pipe.hget(self._keys[1], call_id)
            record, owner = await self._run("get", pipe.execute())
        if record is None:
            return None
        return LiveCall.decode(record, _text(owner or b""))

    async def calls(self) -> list[LiveCall]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys[0])
            pipe.hgetall(self._keys[1])
            records, owners = await self._run("list", pipe.execute())
        out = []
        for key, record in records.items():
            with contextlib.suppress(LiveCallError):
                out.append(LiveCall.decode(record, _text(owners.get(key, b""))))
        return out

    async def ask(
        self, owner: str, request: ControlRequest, wait_seconds: float
    ) -> str | NoAnswer | None:
        # The answer comes back on a channel of its own, subscribed before asking: no
        # blocking command, so the client's short socket timeout holds for everything.
        reply_to = f"{self.prefix}:reply:{secrets.token_hex(12)}"
        try:
            async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(reply_to)
                receivers = await self.client.publish(self.channel(owner), request.encode(reply_to))
                if not receivers:
                    return NO_ANSWER  # nobody listens on that replica's channel: it is gone
                async with asyncio.timeout(wait_seconds):
                    while True:
                        message = await pubsub.get_message(timeout=POLL_SECONDS)
                        if message is not None and message.get("type") == "message":
                            return _outcome(message["data"])
        except TimeoutError:
            raise TimeoutError(f"replica {owner} did not answer within {wait_seconds} s") from None
        except self._lost as exc:
            raise LiveCallError(f"live calls: ask failed: {type(exc).__name__}: {exc}") from exc

    async def serve(self, handler: Handler) -> None:
        """Subscribe to this replica's channel and answer; resubscribes after a Redis loss."""
        # Ends at a cancellation even when redis-py dropped it: Python 3.11's
        # asyncio.wait_for (around each socket write: SUBSCRIBE, a health check's PING)
        # returns a write's result when the cancellation came as it completed, and the poll
        # below never raised it again: a `while True` answered forever, and the keeper's
        # stop() waited for it. Nobody uncancels this task: cancelling() stays set.
        task = asyncio.current_task()
        assert task is not None
        tasks: set[asyncio.Task[None]] = set()
        pause = 0.1
        try:
            while not task.cancelling():
                try:
                    async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe(self.channel(self.replica))
                        pause = 0.1
                        while not task.cancelling():
                            message = await pubsub.get_message(timeout=POLL_SECONDS)
                            if message is None or message.get("type") != "message":
                                continue
                            answering = asyncio.create_task(self._answer(handler, message["data"]))
                            tasks.add(answering)
                            answering.add_done_callback(tasks.discard)
                except self._lost as exc:
                    logger.warning(
                        "live calls: control channel lost, resubscribing",
                        extra={"event": "livecalls_channel_lost", "error": str(exc)},
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
            raise asyncio.CancelledError  # the one a library dropped: end as cancelled
        finally:
            for answering in tasks:
                answering.cancel()

    async def _answer(self, handler: Handler, raw: bytes | str) -> None:
        try:
            data = json.loads(raw)
            request = ControlRequest(
                op=data["op"], call_id=str(data["call_id"]), destination=data.get("destination")
            )
            reply_to = str(data["reply_to"])
        except (ValueError, KeyError, TypeError):
            return  # not a request of ours
        if not reply_to.startswith(f"{self.prefix}:reply:") or request.op not in (
            "hangup",
            "transfer",
        ):
            return
        try:
            outcome = await handler(request)
        except Exception:
            logger.exception("relayed request failed", extra={"call_id": request.call_id})
            outcome = None
        with contextlib.suppress(*self._lost):
            await self.client.publish(reply_to, json.dumps({"outcome": outcome}))

    async def close(self) -> None:
        return None  # the client is the deployment's (app/state/build.py), closed there
