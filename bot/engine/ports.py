"""The two ports through which the engine reaches the outside world.

`CRM` is implemented by `bot.crm.hubspot`, `bot.crm.salesforce` (and the sandbox, which is the
HubSpot adapter pointed at the in-process HubSpot stand-in). `Notifier` is implemented by the
Slack face. The engine imports neither Slack nor any CRM client library: only these protocols.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.engine.model import ReviewView


class CRMErrorKind(StrEnum):
    """The small set of outcomes the engine understands, whatever the vendor said."""

    NOT_FOUND = "not_found"  # the record (or activity) does not exist
    VALIDATION = "validation"  # the CRM refused the value; `message` is the CRM's own words
    RATE_LIMITED = "rate_limited"  # 429 / REQUEST_LIMIT_EXCEEDED; `retry_after` when given
    UNAUTHORIZED = "unauthorized"  # bad or expired token, missing scope
    TRANSIENT = "transient"  # 5xx, timeout, connection error: the outcome of a write is unknown


class CRMError(Exception):
    """A CRM call failed. `message` carries the CRM's own text so it can reach the ledger."""

    def __init__(
        self,
        kind: CRMErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in (CRMErrorKind.RATE_LIMITED, CRMErrorKind.TRANSIENT)


@dataclass(frozen=True)
class FieldOption:
    value: str
    label: str


@dataclass(frozen=True)
class FieldSchema:
    """One field as the CRM describes it.

    `type` is one of: string, text (long text), number, date, datetime, enumeration, bool.
    """

    name: str
    label: str
    type: str
    writable: bool
    options: tuple[FieldOption, ...] = ()


@dataclass
class RecordState:
    """Current values of some fields of one record, as the CRM returned them."""

    record_id: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Owner:
    """The CRM user who owns a record."""

    id: str
    email: str | None
    name: str | None = None


@dataclass(frozen=True)
class FieldChange:
    """One past value of a field, as the CRM's own field history records it.

    `value` is the value the field took, in the CRM's wire form (as `read_records` returns
    values: HubSpot strings, Salesforce JSON types). `at` is when, an aware UTC datetime.
    `source` is "integration" (written through the API by an integration, e.g. this gate),
    "human" (a person, in the CRM's UI) or the CRM's own source name lowercased when it is
    neither (e.g. HubSpot's "workflows", "import"). `by` is who, when the CRM says: a user id
    (HubSpot's updatedByUserId or else its sourceId; Salesforce's CreatedById).
    """

    value: Any
    at: datetime
    source: str
    by: str | None = None


@dataclass(frozen=True)
class Activity:
    """A note or a task to create on a record."""

    kind: str  # "note" | "task"
    body: str
    subject: str | None = None
    due: str | None = None  # ISO 8601 date or datetime, tasks only


class CRM(Protocol):
    """What the engine needs from a CRM. Every method is batch-first.

    Methods raise `CRMError` when the call as a whole failed. Per-record outcomes of a batch
    write are returned, so one bad record never fails its neighbours.
    """

    kind: str  # "hubspot" | "salesforce"

    async def read_records(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        """Current values of `fields` for each record; records that do not exist are absent."""
        ...

    async def update_records(
        self, object_type: str, updates: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        """Write `{record_id: {field: value}}`; one entry per record: None on success."""
        ...

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        """The people behind owner ids (the values of records' owner fields), one entry per id.
        An id the CRM knows no person for (a queue, a deactivated user) gets an `Owner` without an
        email. Callers read the owner field with the record and cache the people they learn."""
        ...

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        """Create a note or task associated with the record; returns the activity's id."""
        ...

    async def create_activities(
        self, object_type: str, items: Sequence[tuple[str, Activity]]
    ) -> list[str | CRMError]:
        """Create many notes and tasks, each `(record_id, activity)`, in as few calls as the CRM
        allows (HubSpot: 100 a request per kind; Salesforce: 200 a request, mixed).

        The result is aligned with `items`: the new activity's id, or that item's `CRMError`
        (NOT_FOUND when the record does not exist, VALIDATION with the CRM's message). Raises
        only when the call failed as a whole (auth, rate limit, outage) before any item was
        answered; once some request answered item by item, every item gets its own outcome, and
        items of a request whose outcome is unknown get a TRANSIENT error (do not resend them
        blindly: they may exist). RATE_LIMITED per item means that item was not sent.
        """
        ...

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        """Delete (or archive) an activity created earlier. Missing activity: CRMError NOT_FOUND."""
        ...

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        """The object's fields, keyed by API name."""
        ...

    def record_url(self, object_type: str, record_id: str) -> str:
        """A link a person can open to see the record in the CRM."""
        ...

    async def read_history(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, dict[str, list[FieldChange]]]:
        """The CRM's own change history of `fields`: `{record_id: {field: [change, ...]}}`.

        Changes are newest first. Records that do not exist are absent; every asked field of a
        record that exists has an entry, an empty list when the CRM kept no history for it.

        History is best-effort: the CRMs keep it only for some fields (Salesforce tracks at most
        20 chosen fields per object, HubSpot keeps a bounded number of past values) and only
        for a while (Salesforce 18 to 24 months), and its sources are only as precise as the
        CRM's own attribution. An empty list therefore means "unknown", never "never changed":
        callers fall back to current values (`read_records`), and the ledger, not the CRM's
        history, stays the store of before-images.
        """
        ...

    async def count_records(self, object_type: str) -> int:
        """How many (live, not archived or deleted) records of `object_type` the CRM holds.

        Best-effort too: HubSpot's search index lags writes by a few seconds.
        """
        ...

    async def close(self) -> None: ...


class Notifier(Protocol):
    """How the engine reaches people. The Slack face implements it."""

    async def post_alert(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Post one message to the alerts channel."""
        ...


class ReviewChannel(Protocol):
    """Where reviews are sent and decided: the Slack face implements it."""

    async def find_user(self, email: str) -> str | None:
        """The chat user with this email, or None."""
        ...

    async def open_dm(self, user_id: str) -> str:
        """The id of the direct-message channel with this user."""
        ...

    async def post_review(self, channel: str, view: ReviewView) -> str:
        """Post the review message; returns its id (Slack's ts)."""
        ...

    async def update_review(self, channel: str, message_id: str, view: ReviewView) -> None: ...

    async def remind(self, channel: str, message_id: str, view: ReviewView) -> None:
        """A nudge next to the review message."""
        ...

    async def group_members(self, group_id: str) -> set[str]:
        """Members of a user group (for the ops group)."""
        ...
