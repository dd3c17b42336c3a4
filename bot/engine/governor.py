"""The CRM request governor: a `CRM` that wraps another and keeps it inside the CRM's budget.

Every request the inner adapter sends is paid for first, from a token bucket held in a
`BudgetStore` (`bot.ledger.budget`: in the database, shared by every replica; or in memory for
one process). While a call waits for tokens, `on_wait(method, seconds)` reports the wait.

The window guarantee. The budget is "at most `requests` per `per_seconds`" (HubSpot: 100 or 190
per 10 s; Salesforce: what the org can spare). A bucket of capacity B refilled at r tokens/s lets
through at most B + r*T requests in any window of T seconds, so with r = (requests - B) /
per_seconds no window of `per_seconds` ever holds more than `requests` requests, on any number of
replicas sharing the store. The price is that the sustained rate is (requests - B) / per_seconds
rather than requests / per_seconds. The default B (`burst`) is max(2 on HubSpot else 1,
requests // 10): about 90% of the vendor's rate, with bursts of a tenth of it; `burst=2` gives
(requests - 2) / per_seconds (98% at HubSpot's 100 per 10 s) and no bursts. Any requests + 1
consecutive tokens span at least per_seconds + 1/r, so the guarantee survives up to 1/r of jitter
between taking a token and the request reaching the CRM.

Tokens per request, not per call. A batch method is cut here into chunks of the size the adapter
sends in one request (HubSpot 100, Salesforce 200; `chunk_size` to override) and each chunk is one
inner call paying one token, so a token is an HTTP request and a rate-limited chunk is resent
alone. The few adapter calls known to send more than one request pay for all of them at once:
on HubSpot `delete_activity` (a GET, then the archive) and `describe` of deals (properties and
pipelines) cost 2, and `owners` costs one request per owner id (HubSpot's owners API has no
batch read; such calls are cut so that a chunk fits in the bucket). A cost above `burst` is charged as `burst` (only
with an explicit `burst=1` on HubSpot). The exception nobody can foresee: when HubSpot refuses a
whole batch for one bad value, the adapter bisects it and resends the halves; those extra
requests are not paid for. `create_activities` pays one token a chunk: on HubSpot the items are
grouped by kind first (notes and tasks go to different batch endpoints), 100 a chunk; on
Salesforce Tasks and Notes share chunks of 200. Leave a little headroom below the vendor's limit; any 429 that
results is still waited out (below).

Concurrency. At most `max_concurrency` calls per process are in flight (an asyncio semaphore).
A call takes its slot before its tokens, so a token is spent only when the request can go at
once: tokens taken and then queued behind a slot would bunch up and break the window guarantee.
Within one process the takers queue on a lock, so only one of them polls the store at a time.

Retries. RATE_LIMITED (429, Salesforce's REQUEST_LIMIT_EXCEEDED) means the request was not
processed: it is retried, reads and writes alike, after `retry_after` or an exponential backoff
with jitter, and the pause is written to the store so that every replica holds off. TRANSIENT
(5xx, timeout, connection) is retried for reads only (`read_records`, `owners`, `describe`);
a write's outcome is unknown, so it is raised and the committer re-reads before writing again.
From `update_records`' per-record results (and `create_activities`' per-item ones) only the
RATE_LIMITED records are resent; the others' results stand. After `max_attempts` inner calls the last error is raised (or, for per-record
results, returned). A wait longer than `max_wait` (the daily ceiling, or a long Retry-After) is
not slept through: the call raises CRMError(RATE_LIMITED, retry_after=seconds), which the
committer already turns into a deferral.

Pacing a job (`Pace`). The budget says how much may be spent; it does not say how to spend it
well. A background job that batches (the committer, review routing) spends fewer requests per
change the longer it lets work gather, so each such job gets a `Pace`: a bucket of passes in the
same store (shared by the replicas: they pace as one), spaced so that the job spends at most
`share` of the budget's rate, given what its passes have cost lately. After a quiet spell a pass
starts at once; under sustained load the passes are evenly spaced, and each carries everything
that arrived since the last one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from bot.engine.ports import (
    CRM,
    Activity,
    CRMError,
    CRMErrorKind,
    FieldChange,
    FieldSchema,
    Owner,
    RecordState,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# The job a CRM call is made for (a `Pace`'s lane), so the governor can count what it spent.
_lane: ContextVar[str | None] = ContextVar("crm_lane", default=None)

# Records one request of the adapter carries: the batch endpoints' limits.
CHUNK_SIZES = {"hubspot": 100, "salesforce": 200}
DEFAULT_CHUNK_SIZE = 100
_HUBSPOT_DEALS = {"deal", "deals", "0-3"}


class BudgetStore(Protocol):
    """A token bucket shared by whoever shares the store (`bot.ledger.budget`)."""

    async def take(
        self,
        name: str,
        *,
        rate: float,
        capacity: float,
        daily_limit: int | None,
        now: datetime,
        cost: int = 1,
    ) -> float:
        """Take `cost` tokens and return 0, or take nothing and return the seconds to wait."""
        ...

    async def pause(self, name: str, *, until: datetime) -> None:
        """Nobody takes a token before `until`."""
        ...


def requests_per_call(kind: str, method: str, object_type: str = "", records: int = 1) -> int:
    """The HTTP requests one inner call sends (for batch methods: one chunk of `records`)."""
    if kind == "hubspot":
        if method == "delete_activity":
            return 2
        if method == "describe" and object_type.lower() in _HUBSPOT_DEALS:
            return 2
        if method == "owners":
            return records  # one owners-API request per id
    return 1


def _activity_group(kind: str) -> str:
    """The HubSpot endpoint an activity kind goes to (one batch create per kind)."""
    lowered = kind.lower()
    return {"note": "notes", "0-46": "notes", "task": "tasks", "0-27": "tasks"}.get(
        lowered, lowered
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _all_or_nothing(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if len(tasks) == 1:
        return [await tasks[0]]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class GovernedCRM:
    """`inner`, paced by a shared request budget and retried where retrying is safe.

    `name` names the bucket in the store: every replica talking to the same CRM account uses the
    same name and the same `requests` / `per_seconds`. `daily_limit` is the CRM's daily
    allowance and `daily_share` the part of it this gate may spend (others use the same org's
    allowance): the ceiling is int(daily_limit * daily_share) requests per UTC day (Salesforce
    counts a rolling 24 hours; a UTC day is the nearest the store keeps). `on_wait(method,
    seconds)` is called before every sleep (for a token, a CRM pause, or a retry's backoff);
    a wait over `max_wait` is not slept and not reported there: it is raised as RATE_LIMITED.
    `sleep` and `clock` are injectable for tests.
    """

    def __init__(
        self,
        inner: CRM,
        store: BudgetStore,
        *,
        name: str,
        requests: int,
        per_seconds: float,
        daily_limit: int | None = None,
        daily_share: float = 1.0,
        max_concurrency: int = 8,
        max_attempts: int = 8,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_wait: Callable[[str, float], None] | None = None,
        burst: int | None = None,
        chunk_size: int | None = None,
        max_wait: float = 30.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if requests < 2 or per_seconds <= 0:
            raise ValueError("the budget needs requests >= 2 and per_seconds > 0")
        if not 0 < daily_share <= 1:
            raise ValueError("daily_share must be in (0, 1]")
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        self.inner = inner
        self.kind = inner.kind
        self.store = store
        self.name = name
        most = 2 if inner.kind == "hubspot" else 1  # the dearest fixed-cost call
        self.capacity = burst if burst is not None else max(most, requests // 10)
        if not 1 <= self.capacity < requests:
            raise ValueError("burst must be at least 1 and below requests")
        # B + r * per_seconds == requests: no window of per_seconds sees more (module docstring).
        self.rate = (requests - self.capacity) / per_seconds
        self.daily_ceiling = None if daily_limit is None else int(daily_limit * daily_share)
        self.chunk_size = chunk_size or CHUNK_SIZES.get(inner.kind, DEFAULT_CHUNK_SIZE)
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._slots = asyncio.Semaphore(max_concurrency)
        self._turn = asyncio.Lock()  # one taker per process polls the store at a time
        self._sleep = sleep
        self._on_wait = on_wait
        self._clock = clock
        self.spent: Counter[str] = Counter()  # requests paid for, per lane (see `Pace`)

    def pace(self, lane: str, share: float, *, cost: float = 1.0) -> Pace:
        """A `Pace` for a job that may spend `share` of this budget under sustained load;
        `cost` is a first guess of the requests a pass sends."""
        return Pace(self, lane, share, cost=cost)

    # --- the CRM port -----------------------------------------------------------------------
    async def read_records(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        ids = list(dict.fromkeys(str(i) for i in record_ids))

        def read(chunk: Sequence[str]) -> Callable[[], Awaitable[dict[str, RecordState]]]:
            return lambda: self.inner.read_records(object_type, chunk, fields)

        pages = await _all_or_nothing(
            self._call("read_records", 1, read(c), read=True) for c in _chunks(ids, self.chunk_size)
        )
        return {rid: state for page in pages for rid, state in page.items()}

    async def update_records(
        self, object_type: str, updates: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        items = list(updates.items())
        chunks = [dict(c) for c in _chunks(items, self.chunk_size)]
        outcomes = await asyncio.gather(
            *(self._update_chunk(object_type, c) for c in chunks), return_exceptions=True
        )
        results: dict[str, CRMError | None] = {}
        raised: list[CRMError] = []
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, CRMError):
                raised.append(outcome)
                results.update(dict.fromkeys(chunk, outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.update(outcome)
        # As the adapters do: raise when the call failed as a whole; once any chunk has answered
        # record by record, every record gets its own outcome so none is lost.
        if raised and len(raised) == len(chunks):
            raise raised[0]
        return results

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        ids = list(dict.fromkeys(str(i) for i in owner_ids if i))
        size = self.chunk_size
        if requests_per_call(self.kind, "owners", "", 2) > 1:
            size = max(1, min(size, self.capacity))  # one request per id: a chunk fits the bucket

        def read(chunk: Sequence[str]) -> Callable[[], Awaitable[dict[str, Owner]]]:
            return lambda: self.inner.owners(chunk)

        pages = await _all_or_nothing(
            self._call(
                "owners", requests_per_call(self.kind, "owners", "", len(c)), read(c), read=True
            )
            for c in _chunks(ids, size)
        )
        return {oid: owner for page in pages for oid, owner in page.items()}

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        return await self._call(
            "create_activity",
            requests_per_call(self.kind, "create_activity", object_type),
            lambda: self.inner.create_activity(object_type, record_id, activity),
            read=False,
        )

    async def create_activities(
        self, object_type: str, items: Sequence[tuple[str, Activity]]
    ) -> list[str | CRMError]:
        """Cut as the adapter sends it (HubSpot: per kind, then 100; Salesforce: 200 mixed), one
        token per chunk. A chunk refused whole for the rate is resent whole, and items answered
        RATE_LIMITED are resent alone (they were not created); anything else, TRANSIENT
        included, is never resent: an activity must not be created twice."""
        indexed = list(enumerate(items))
        if self.kind == "hubspot":
            groups: dict[str, list[tuple[int, tuple[str, Activity]]]] = {}
            for entry in indexed:
                groups.setdefault(_activity_group(entry[1][1].kind), []).append(entry)
            chunks = [c for g in groups.values() for c in _chunks(g, self.chunk_size)]
        else:
            chunks = _chunks(indexed, self.chunk_size)
        outcomes = await asyncio.gather(
            *(self._create_chunk(object_type, dict(c)) for c in chunks), return_exceptions=True
        )
        results: list[str | CRMError | None] = [None] * len(items)
        raised: list[CRMError] = []
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, CRMError):
                raised.append(outcome)
                answered: Mapping[int, str | CRMError] = dict.fromkeys(
                    (i for i, _ in chunk), outcome
                )
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answered = outcome
            for index, result in answered.items():
                results[index] = result
        # As update_records: raise only when every chunk failed as a whole.
        if raised and len(raised) == len(chunks):
            raise raised[0]
        return [
            r if r is not None else CRMError(CRMErrorKind.TRANSIENT, "no answer") for r in results
        ]

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        await self._call(
            "delete_activity",
            requests_per_call(self.kind, "delete_activity", kind),
            lambda: self.inner.delete_activity(kind, activity_id),
            read=False,
        )

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        return await self._call(
            "describe",
            requests_per_call(self.kind, "describe", object_type),
            lambda: self.inner.describe(object_type),
            read=True,
        )

    async def read_history(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, dict[str, list[FieldChange]]]:
        ids = list(dict.fromkeys(str(i) for i in record_ids))
        # HubSpot answers history for at most 50 records per request.
        size = min(self.chunk_size, 50) if self.kind == "hubspot" else self.chunk_size

        def read(chunk: Sequence[str]) -> Callable[[], Awaitable[dict[str, dict[str, list[FieldChange]]]]]:
            return lambda: self.inner.read_history(object_type, chunk, fields)

        pages = await _all_or_nothing(
            self._call("read_history", 1, read(c), read=True) for c in _chunks(ids, size)
        )
        return {rid: history for page in pages for rid, history in page.items()}

    async def count_records(self, object_type: str) -> int:
        return await self._call(
            "count_records", 1, lambda: self.inner.count_records(object_type), read=True
        )

    def record_url(self, object_type: str, record_id: str) -> str:
        return self.inner.record_url(object_type, record_id)

    async def close(self) -> None:
        await self.inner.close()

    # --- paying and retrying ----------------------------------------------------------------
    async def _call(
        self, method: str, cost: int, call: Callable[[], Awaitable[T]], *, read: bool
    ) -> T:
        attempt = 0
        while True:
            attempt += 1
            async with self._slots:
                await self._pay(method, cost)
                try:
                    return await call()
                except CRMError as exc:
                    error = exc
            retry = error.kind is CRMErrorKind.RATE_LIMITED or (
                read and error.kind is CRMErrorKind.TRANSIENT
            )
            if not retry or attempt >= self.max_attempts:
                raise error
            await self._before_retry(method, error, attempt)

    async def _update_chunk(
        self, object_type: str, chunk: dict[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        results: dict[str, CRMError | None] = {}
        pending = chunk
        attempt = 0
        while True:
            attempt += 1
            answered: dict[str, CRMError | None] | None = None
            async with self._slots:
                await self._pay("update_records", 1)
                try:
                    answered = await self.inner.update_records(object_type, pending)
                except CRMError as exc:
                    error = exc
            if answered is None:
                # Rate limited as a whole: nothing was written, send it all again. Anything else
                # (a 5xx: unknown outcome) goes back to the caller.
                if error.kind is not CRMErrorKind.RATE_LIMITED or attempt >= self.max_attempts:
                    raise error
            else:
                results.update(answered)
                limited = [
                    (rid, e)
                    for rid, e in answered.items()
                    if e is not None and e.kind is CRMErrorKind.RATE_LIMITED and rid in pending
                ]
                if not limited or attempt >= self.max_attempts:
                    return results
                # Only the records refused for the rate were not processed: resend just those.
                pending = {rid: pending[rid] for rid, _ in limited}
                error = max((e for _, e in limited), key=lambda e: e.retry_after or 0.0)
            await self._before_retry("update_records", error, attempt)

    async def _create_chunk(
        self, object_type: str, chunk: dict[int, tuple[str, Activity]]
    ) -> dict[int, str | CRMError]:
        results: dict[int, str | CRMError] = {}
        pending = chunk
        attempt = 0
        while True:
            attempt += 1
            answered: list[str | CRMError] | None = None
            async with self._slots:
                await self._pay("create_activities", 1)
                try:
                    answered = await self.inner.create_activities(
                        object_type, list(pending.values())
                    )
                except CRMError as exc:
                    error = exc
            if answered is None:
                # Rate limited as a whole: nothing was created, send it all again. Anything else
                # (a 5xx: unknown outcome) goes back to the caller.
                if error.kind is not CRMErrorKind.RATE_LIMITED or attempt >= self.max_attempts:
                    raise error
            else:
                if len(answered) != len(pending):
                    raise CRMError(
                        CRMErrorKind.TRANSIENT, "the CRM answered for the wrong number of items"
                    )
                results.update(zip(pending, answered, strict=True))
                limited = [
                    (index, r)
                    for index, r in zip(pending, answered, strict=True)
                    if isinstance(r, CRMError) and r.kind is CRMErrorKind.RATE_LIMITED
                ]
                if not limited or attempt >= self.max_attempts:
                    return results
                # Only the items refused for the rate were not created: resend just those.
                pending = {index: pending[index] for index, _ in limited}
                error = max((e for _, e in limited), key=lambda e: e.retry_after or 0.0)
            await self._before_retry("create_activities", error, attempt)

    async def _pay(self, method: str, cost: int) -> None:
        """Take `cost` tokens, sleeping while the store says to wait."""
        cost = max(1, min(cost, self.capacity))
        async with self._turn:
            while True:
                try:
                    wait = await self.store.take(
                        self.name,
                        rate=self.rate,
                        capacity=self.capacity,
                        daily_limit=self.daily_ceiling,
                        now=self._clock(),
                        cost=cost,
                    )
                except Exception as exc:
                    # Nothing was sent; a write's caller treats this as "unknown", which is safe.
                    raise CRMError(
                        CRMErrorKind.TRANSIENT,
                        f"the CRM request budget is unavailable: {type(exc).__name__}",
                    ) from exc
                if wait <= 0:
                    lane = _lane.get()
                    if lane is not None:
                        self.spent[lane] += cost
                    return
                if wait > self.max_wait:
                    raise CRMError(
                        CRMErrorKind.RATE_LIMITED,
                        f"the {self.name} CRM request budget allows no request for "
                        f"{math.ceil(wait)} s (daily ceiling reached, or the CRM asked to wait)",
                        retry_after=wait,
                    )
                self._waited(method, wait)
                await self._sleep(wait)

    async def _before_retry(self, method: str, error: CRMError, attempt: int) -> None:
        if error.kind is CRMErrorKind.RATE_LIMITED:
            delay = error.retry_after if error.retry_after else self._backoff(attempt)
            log.info("CRM rate limited (%s); every replica holds off %.2fs", method, delay)
            # The next `_pay` sleeps through the pause (and reports it through on_wait).
            try:
                await self.store.pause(self.name, until=self._clock() + timedelta(seconds=delay))
            except Exception:
                log.warning("could not record the CRM's pause in the budget store", exc_info=True)
                self._waited(method, delay)
                await self._sleep(delay)
            return
        delay = self._backoff(attempt)
        log.info("CRM %s failed transiently (%s); retry in %.2fs", method, error.message, delay)
        self._waited(method, delay)
        await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter: between half and all of backoff * 2^(attempt-1)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2

    def _waited(self, method: str, seconds: float) -> None:
        if self._on_wait is None:
            return
        try:
            self._on_wait(method, seconds)
        except Exception:  # metrics must never break a CRM call
            log.exception("on_wait failed")


class Pace:
    """Spaces a job's passes so that, under sustained load, the job spends at most `share` of
    the CRM budget (see the module docstring).

    The bucket (in the budget store, so replicas pace as one) holds passes, not requests: one
    pass at most, refilled at share * rate / cost passes per second, where `cost` is a moving
    average of the requests a pass sends, counted by the governor inside `spending()`. Evenly
    spaced passes keep the wait of a change for its pass, and so its latency, as short as the
    share allows; paying each pass's exact cost would space them unevenly (a pass with a note
    would hold the next one back further). `start()` waits for a pass; `ready_in()` is its
    non-blocking form for a job that has other work to do meanwhile."""

    SMOOTHING = 0.2  # weight of the latest pass in the moving average

    def __init__(self, crm: GovernedCRM, lane: str, share: float, *, cost: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError("a pace's share must be in (0, 1]")
        if cost <= 0:
            raise ValueError("a pass costs at least one request")
        self.crm = crm
        self.lane = lane
        self.name = f"{crm.name}:{lane}"
        self.rate = crm.rate * share  # requests per second
        self.cost = float(cost)  # requests per pass, learned from the passes

    @property
    def interval(self) -> float:
        """Seconds between passes under sustained load."""
        return self.cost / self.rate

    async def ready_in(self) -> float:
        """Take a pass and return 0, or take nothing and return the seconds until one is due."""
        return await self.crm.store.take(
            self.name,
            rate=1.0 / self.interval,
            capacity=1.0,
            daily_limit=None,
            now=self.crm._clock(),
        )

    async def start(self) -> None:
        """Wait until a pass may start, and take it."""
        while (wait := await self.ready_in()) > 0:
            await self.crm._sleep(wait)

    @asynccontextmanager
    async def spending(self) -> AsyncIterator[None]:
        """Count the requests sent inside, and learn the cost of a pass from them."""
        token = _lane.set(self.lane)
        before = self.crm.spent[self.lane]
        try:
            yield
        finally:
            _lane.reset(token)
            spent = self.crm.spent[self.lane] - before
            if spent > 0:  # a pass that found nothing to do says nothing about the cost
                self.cost += self.SMOOTHING * (spent - self.cost)
