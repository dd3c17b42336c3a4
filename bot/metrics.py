"""Prometheus metrics, one registry per gate (so tests can run several gates in one process).

Counters count what this replica did; sum them across replicas in Prometheus. Gauges that
describe shared state (pending reviews) are read from the database, so every replica reports
the same value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.engine.ports import CRM, Activity, CRMError, FieldSchema, Owner, RecordState

T = TypeVar("T")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.proposals = Counter(
            "gate_proposal_changes", "Changes received, by object, field, tier and intake status",
            ["object", "field", "tier", "status"], registry=r,
        )
        self.outcomes = Counter(
            "gate_change_outcomes", "Changes that reached an outcome after intake",
            ["object", "field", "tier", "outcome"], registry=r,
        )
        self.commit_latency = Histogram(
            "gate_commit_latency_seconds", "From intake to committed", buckets=LATENCY_BUCKETS, registry=r
        )
        self.review_latency = Histogram(
            "gate_review_latency_seconds", "From intake to a reviewer's decision", buckets=LATENCY_BUCKETS, registry=r
        )
        self.pending_reviews = Gauge("gate_pending_reviews", "Reviews waiting for a decision", registry=r)
        self.crm_calls = Counter("gate_crm_calls", "CRM API calls by method and outcome", ["method", "status"], registry=r)
        self.slack_calls = Counter("gate_slack_calls", "Slack Web API calls by method and outcome", ["method", "status"], registry=r)
        self.rate_limit_waits = Counter(
            "gate_rate_limit_wait_seconds", "Seconds spent waiting for the CRM budget or Retry-After", ["method"], registry=r
        )
        self.rollbacks = Counter("gate_rollback_changes", "Compensating changes by outcome", ["outcome"], registry=r)
        self.shadow = Counter(
            "gate_shadow_outcomes", "Shadow proposals evaluated", ["object", "field", "outcome"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- recording helpers -------------------------------------------------------------------
    def received(self, object_type: str, changes: Sequence[Mapping[str, Any]]) -> None:
        for c in changes:
            self.proposals.labels(object_type, c["field"], c["tier"], c["status"]).inc()

    def outcome(self, object_type: str, field: str, tier: str, outcome: str, created_at: datetime | None, now: datetime) -> None:
        self.outcomes.labels(object_type, field, tier, outcome).inc()
        if outcome == "committed" and created_at is not None:
            self.commit_latency.observe(max(0.0, (now - created_at).total_seconds()))

    def waited(self, method: str, seconds: float) -> None:
        self.rate_limit_waits.labels(method).inc(seconds)


class InstrumentedCRM:
    """A CRM that counts every call by method and outcome; everything else passes through."""

    def __init__(self, inner: CRM, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.kind = inner.kind

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await call()
        except CRMError as exc:
            self.metrics.crm_calls.labels(method, exc.kind.value).inc()
            raise
        self.metrics.crm_calls.labels(method, "ok").inc()
        return result

    async def read_records(self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]) -> dict[str, RecordState]:
        return await self._call("read_records", lambda: self.inner.read_records(object_type, record_ids, fields))

    async def update_records(self, object_type: str, updates: Mapping[str, Mapping[str, Any]]) -> dict[str, CRMError | None]:
        return await self._call("update_records", lambda: self.inner.update_records(object_type, updates))

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        return await self._call("owners", lambda: self.inner.owners(owner_ids))

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        return await self._call("create_activity", lambda: self.inner.create_activity(object_type, record_id, activity))

    async def create_activities(self, object_type: str, items: Sequence[tuple[str, Activity]]) -> list[str | CRMError]:
        return await self._call("create_activities", lambda: self.inner.create_activities(object_type, items))

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        return await self._call("delete_activity", lambda: self.inner.delete_activity(kind, activity_id))

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        return await self._call("describe", lambda: self.inner.describe(object_type))

    async def read_history(self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]) -> Any:
        return await self._call("read_history", lambda: self.inner.read_history(object_type, record_ids, fields))

    async def count_records(self, object_type: str) -> int:
        return await self._call("count_records", lambda: self.inner.count_records(object_type))

    def record_url(self, object_type: str, record_id: str) -> str:
        return self.inner.record_url(object_type, record_id)

    async def close(self) -> None:
        await self.inner.close()

