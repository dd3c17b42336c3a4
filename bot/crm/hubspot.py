"""The HubSpot adapter: the engine's `CRM` port over hubspot-api-client (CRM v3).

The client is synchronous (urllib3), so every call runs on this adapter's own thread pool. Reads
and writes go through the batch endpoints; a batch that HubSpot refuses as a whole for one bad
value is split until the bad records are isolated, so every valid record is still written.
Every failure leaves here as a `CRMError`, with HubSpot's own message and never the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import urllib3
from hubspot import HubSpot  # type: ignore[import-untyped]
from hubspot.crm.objects import (  # type: ignore[import-untyped]
    AssociationSpec,
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchReadInputSimplePublicObjectId,
    PublicAssociationsForObject,
    PublicObjectId,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectId,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.objects import Configuration as ObjectsConfiguration
from urllib3.util.retry import Retry

from bot.engine.ports import (
    Activity,
    CRMError,
    CRMErrorKind,
    FieldChange,
    FieldOption,
    FieldSchema,
    Owner,
    RecordState,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_LIMIT = 100
HISTORY_BATCH_LIMIT = 50  # batch read with propertiesWithHistory

OBJECT_ALIASES = {
    "contact": "contacts", "0-1": "contacts",
    "company": "companies", "0-2": "companies",
    "deal": "deals", "0-3": "deals",
    "note": "notes", "0-46": "notes",
    "task": "tasks", "0-27": "tasks",
}  # fmt: skip
OBJECT_TYPE_IDS = {
    "contacts": "0-1",
    "companies": "0-2",
    "deals": "0-3",
    "notes": "0-46",
    "tasks": "0-27",
}
ASSOCIATION_TYPES: dict[tuple[str, str], int] = {
    ("notes", "deals"): 214, ("notes", "contacts"): 202, ("notes", "companies"): 190,
    ("tasks", "deals"): 216, ("tasks", "contacts"): 204, ("tasks", "companies"): 192,
}  # fmt: skip
# HubSpot's sourceType of a property change, in the port's terms; others pass through lowercased.
INTEGRATION_SOURCES = {"INTEGRATION", "API", "PUBLIC_API"}
HUMAN_SOURCES = {"CRM_UI", "MOBILE_IOS", "MOBILE_ANDROID"}
EXPECTED_KINDS = (CRMErrorKind.NOT_FOUND, CRMErrorKind.VALIDATION)  # answers, not incidents
WHOLE_CALL_KINDS = (CRMErrorKind.UNAUTHORIZED, CRMErrorKind.RATE_LIMITED, CRMErrorKind.TRANSIENT)
STATUS_KINDS = {
    400: CRMErrorKind.VALIDATION,
    401: CRMErrorKind.UNAUTHORIZED,
    403: CRMErrorKind.UNAUTHORIZED,
    404: CRMErrorKind.NOT_FOUND,
    409: CRMErrorKind.VALIDATION,
    422: CRMErrorKind.VALIDATION,
    429: CRMErrorKind.RATE_LIMITED,
}


def canonical_type(object_type: str) -> str:
    return OBJECT_ALIASES.get(object_type.lower(), object_type.lower())


class HubSpotCRM:
    kind = "hubspot"

    def __init__(
        self,
        access_token: str,
        base_url: str = "https://api.hubapi.com",
        *,
        max_workers: int = 8,
        portal_id: str | None = None,
        app_url: str = "https://app.hubspot.com",
        timeout: float = 30.0,
    ) -> None:
        self._token = access_token
        self.portal_id = portal_id
        self.app_url = app_url.rstrip("/")
        self._timeout = timeout
        # No silent retries: a retried write may land twice, and the engine decides what to retry.
        client = HubSpot(
            access_token=access_token,
            host=base_url.rstrip("/"),
            retry=Retry(total=0),
            connection_pool_maxsize=max_workers,
        )
        # Each attribute access below builds a fresh ApiClient and connection pool: keep them.
        crm = client.crm
        self._objects = crm.objects.basic_api
        self._batch = crm.objects.batch_api
        self._search = crm.objects.search_api
        self._owners = crm.owners.owners_api
        self._properties = crm.properties.core_api
        self._pipelines = crm.pipelines.pipelines_api
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="hubspot")
        # One configuration for the request models we build: each would otherwise make its own.
        self._models = ObjectsConfiguration()

    # --- the CRM port -----------------------------------------------------------------------
    async def read_records(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        object_type = canonical_type(object_type)
        ids = list(dict.fromkeys(str(i) for i in record_ids))
        chunks = [ids[i : i + BATCH_LIMIT] for i in range(0, len(ids), BATCH_LIMIT)]
        pages = await asyncio.gather(*(self._read_chunk(object_type, c, fields) for c in chunks))
        return {state.record_id: state for page in pages for state in page}

    async def update_records(
        self, object_type: str, updates: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        object_type = canonical_type(object_type)
        items = [(str(i), {k: _wire(v) for k, v in props.items()}) for i, props in updates.items()]
        chunks = [items[i : i + BATCH_LIMIT] for i in range(0, len(items), BATCH_LIMIT)]
        outcomes = await asyncio.gather(*(self._update_chunk(object_type, c) for c in chunks))
        results = {record_id: outcome for chunk in outcomes for record_id, outcome in chunk.items()}
        # When nothing was decided record by record (bad token, rate limit, outage) the call
        # failed as a whole and raises, per the port; otherwise neighbours' outcomes must survive.
        whole = [e for e in results.values() if e is not None and e.kind in WHOLE_CALL_KINDS]
        if results and len(whole) == len(results):
            raise whole[0]
        return results

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        """One owners-API request per id (HubSpot has no batch read of owners)."""
        unique = list(dict.fromkeys(str(o) for o in owner_ids if o))
        found = await asyncio.gather(*(self._owner(o) for o in unique))
        return dict(zip(unique, found, strict=True))

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        activity_type, properties, association = _activity_input(
            canonical_type(object_type), str(record_id), activity
        )
        payload = SimplePublicObjectInputForCreate(
            properties=properties, associations=[association]
        )
        created = await self._call(self._objects.create, activity_type, payload)
        return str(created.id)

    async def create_activities(
        self, object_type: str, items: Sequence[tuple[str, Activity]]
    ) -> list[str | CRMError]:
        """Batch creates (`POST /crm/v3/objects/{notes|tasks}/batch/create`), 100 inputs a
        request per kind. HubSpot does not promise that `results` follow the inputs' order, so
        every input carries a unique `objectWriteTraceId` that HubSpot echoes on its result and
        names in a 207's errors; the answers are mapped back by it, never by position."""
        object_type = canonical_type(object_type)
        outcomes: list[str | CRMError | None] = [None] * len(items)
        groups: dict[str, list[_Pending]] = {}
        for index, (record_id, activity) in enumerate(items):
            try:
                activity_type, properties, association = _activity_input(
                    object_type, str(record_id), activity
                )
            except CRMError as error:
                outcomes[index] = error  # refused before any request: nothing was sent
                continue
            pending = _Pending(index, uuid.uuid4().hex, activity_type, properties, association)
            groups.setdefault(activity_type, []).append(pending)
        chunks = [
            group[i : i + BATCH_LIMIT]
            for group in groups.values()
            for i in range(0, len(group), BATCH_LIMIT)
        ]
        answers = await asyncio.gather(*(self._create_chunk(c) for c in chunks))
        sent: list[str | CRMError] = []
        for answer in answers:
            for index, outcome in answer.items():
                outcomes[index] = outcome
                sent.append(outcome)
        # As update_records: raise only when nothing was answered item by item.
        whole = [o for o in sent if isinstance(o, CRMError) and o.kind in WHOLE_CALL_KINDS]
        if sent and len(whole) == len(sent):
            raise whole[0]
        return [
            o if o is not None else CRMError(CRMErrorKind.TRANSIENT, "not sent") for o in outcomes
        ]

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        activity_type = canonical_type(kind)
        # HubSpot answers 204 to an archive of an id that does not exist: look first.
        await self._call(
            self._objects.get_by_id, activity_type, str(activity_id), properties=["hs_object_id"]
        )
        await self._call(self._objects.archive, activity_type, str(activity_id))

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        object_type = canonical_type(object_type)
        props_call = self._call(self._properties.get_all, object_type, archived=False)
        if object_type == "deals":
            props, pipelines = await asyncio.gather(
                props_call, self._call(self._pipelines.get_all, "deals")
            )
        else:
            props, pipelines = await props_call, None
        fields = {p.name: _field_schema(p) for p in props.results or []}
        if pipelines is not None and "dealstage" in fields:
            # Stages live in the pipelines; the property's own options can lag behind them.
            stages = _stage_options(pipelines.results or [])
            fields["dealstage"] = dataclasses.replace(fields["dealstage"], options=stages)
        return fields

    async def read_history(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, dict[str, list[FieldChange]]]:
        """Batch reads with `propertiesWithHistory`, 50 records a request (HubSpot's limit when
        history is asked for). HubSpot keeps history for every property; an unknown property, or
        one never set, gets an empty list. Values are HubSpot's strings ("" for a cleared value);
        `by` is the HubSpot user id when a person made the change, else HubSpot's sourceId (for
        an integration, its app id)."""
        object_type = canonical_type(object_type)
        ids = list(dict.fromkeys(str(i) for i in record_ids))
        names = list(dict.fromkeys(fields))
        chunks = [ids[i : i + HISTORY_BATCH_LIMIT] for i in range(0, len(ids), HISTORY_BATCH_LIMIT)]
        pages = await asyncio.gather(*(self._history_chunk(object_type, c, names) for c in chunks))
        return {record_id: history for page in pages for record_id, history in page.items()}

    async def count_records(self, object_type: str) -> int:
        """The search API's `total` for a search with no filters (one result asked for). HubSpot's
        search index trails writes by a few seconds, and the search API has its own, lower rate
        limit (a few requests a second)."""
        object_type = canonical_type(object_type)
        request = PublicObjectSearchRequest(
            filter_groups=[], sorts=[], properties=["hs_object_id"], limit=1
        )
        response = await self._call(self._search.do_search, object_type, request)
        return int(response.total or 0)

    def record_url(self, object_type: str, record_id: str) -> str:
        object_type = canonical_type(object_type)
        type_id = OBJECT_TYPE_IDS.get(object_type, object_type)
        if self.portal_id is None:
            # HubSpot's portal-less `/l/` links send a signed-in user to their own account.
            return f"{self.app_url}/l/contacts/record/{type_id}/{record_id}"
        return f"{self.app_url}/contacts/{self.portal_id}/record/{type_id}/{record_id}"

    async def close(self) -> None:
        # Waiting for an in-flight request (up to `timeout`) must not block the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        apis = (
            self._objects,
            self._batch,
            self._search,
            self._owners,
            self._properties,
            self._pipelines,
        )
        for api in apis:
            api.api_client.rest_client.pool_manager.clear()

    # --- batches ----------------------------------------------------------------------------
    async def _read_chunk(
        self, object_type: str, ids: list[str], fields: Sequence[str]
    ) -> list[RecordState]:
        request = BatchReadInputSimplePublicObjectId(
            properties=list(fields),
            properties_with_history=[],
            inputs=[SimplePublicObjectId(id=i, local_vars_configuration=self._models) for i in ids],
            local_vars_configuration=self._models,
        )
        # A 207 lists the missing ids in `errors`; records absent from `results` do not exist.
        response = await self._call(_json_body, self._batch.read, object_type, request, archived=False)
        return [
            RecordState(str(obj["id"]), {f: (obj.get("properties") or {}).get(f) for f in fields})
            for obj in response.get("results") or []
        ]

    async def _history_chunk(
        self, object_type: str, ids: list[str], fields: list[str]
    ) -> dict[str, dict[str, list[FieldChange]]]:
        request = BatchReadInputSimplePublicObjectId(
            properties=["hs_object_id"],
            properties_with_history=fields,
            inputs=[SimplePublicObjectId(id=i) for i in ids],
        )
        # As for reads, a 207 names the missing ids; only `results` exist.
        response = await self._call(self._batch.read, object_type, request, archived=False)
        out: dict[str, dict[str, list[FieldChange]]] = {}
        for obj in response.results or []:
            history = obj.properties_with_history or {}
            out[str(obj.id)] = {f: _changes(history.get(f) or []) for f in fields}
        return out

    async def _update_chunk(
        self, object_type: str, items: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, CRMError | None]:
        request = BatchInputSimplePublicObjectBatchInput(
            inputs=[
                SimplePublicObjectBatchInput(id=i, properties=p, local_vars_configuration=self._models)
                for i, p in items
            ],
            local_vars_configuration=self._models,
        )
        try:
            response = await self._call(_json_body, self._batch.update, object_type, request)
        except CRMError as error:
            if error.kind is CRMErrorKind.VALIDATION and len(items) > 1:
                # HubSpot refuses the whole batch for one bad value without naming the record, and
                # writes nothing: resending the halves is safe and isolates the culprits.
                middle = len(items) // 2
                halves = await asyncio.gather(
                    self._update_chunk(object_type, items[:middle]),
                    self._update_chunk(object_type, items[middle:]),
                )
                return {**halves[0], **halves[1]}
            return {record_id: error for record_id, _ in items}
        written = {str(obj["id"]) for obj in response.get("results") or []}
        refused: dict[str, CRMError] = {}
        for err in response.get("errors") or []:
            category = str(err.get("category") or "")
            kind = CRMErrorKind.NOT_FOUND if category == "OBJECT_NOT_FOUND" else CRMErrorKind.VALIDATION
            for record_id in (err.get("context") or {}).get("ids", []):
                refused[str(record_id)] = CRMError(
                    kind, self._scrub(str(err.get("message") or category)), status=207
                )
        outcome: dict[str, CRMError | None] = {}
        for record_id, _ in items:
            if record_id in refused:
                outcome[record_id] = refused[record_id]
            elif record_id in written:
                outcome[record_id] = None
            else:
                outcome[record_id] = CRMError(
                    CRMErrorKind.TRANSIENT, "HubSpot did not report on this record", status=207
                )
        return outcome

    async def _create_chunk(self, items: list[_Pending]) -> dict[int, str | CRMError]:
        """One batch create of one kind; `{item index: new id or CRMError}`."""
        activity_type = items[0].activity_type
        request = BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                SimplePublicObjectBatchInputForCreate(
                    properties=p.properties,
                    associations=[p.association],
                    object_write_trace_id=p.trace,
                )
                for p in items
            ]
        )
        try:
            response = await self._call(self._batch.create, activity_type, request)
        except CRMError as error:
            if error.kind is CRMErrorKind.VALIDATION and len(items) > 1:
                # A 400 refuses the whole batch for one bad input and creates nothing: resending
                # the halves is safe and isolates the culprits, as for updates.
                middle = len(items) // 2
                halves = await asyncio.gather(
                    self._create_chunk(items[:middle]), self._create_chunk(items[middle:])
                )
                return {**halves[0], **halves[1]}
            if error.kind is CRMErrorKind.VALIDATION and _missing_target(error.message):
                error = CRMError(CRMErrorKind.NOT_FOUND, error.message, status=error.status)
            return {p.index: error for p in items}
        by_trace = {p.trace: p for p in items}
        outcome: dict[int, str | CRMError] = {}
        for err in getattr(response, "errors", None) or []:
            context = err.context or {}
            sub = str(getattr(err, "sub_category", None) or "")
            missing = err.category == "OBJECT_NOT_FOUND" or sub.endswith("INVALID_OBJECT_IDS")
            kind = CRMErrorKind.NOT_FOUND if missing else CRMErrorKind.VALIDATION
            for trace in context.get("objectWriteTraceId", []):
                pending = by_trace.get(str(trace))
                if pending is not None:
                    outcome[pending.index] = CRMError(
                        kind, self._scrub(err.message or err.category), status=207
                    )
        unclaimed = [p for p in items if p.index not in outcome]
        for obj in response.results or []:
            pending = by_trace.get(str(getattr(obj, "object_write_trace_id", None) or ""))
            if pending is None:
                pending = _by_content(unclaimed, obj.properties or {})
            if pending is not None and pending.index not in outcome:
                outcome[pending.index] = str(obj.id)
                if pending in unclaimed:
                    unclaimed.remove(pending)
        for p in items:
            outcome.setdefault(
                p.index,
                CRMError(
                    CRMErrorKind.TRANSIENT,
                    "HubSpot did not report on this activity; it may have been created",
                    status=207,
                ),
            )
        return outcome

    async def _owner(self, owner_id: str) -> Owner:
        try:
            found = await self._call(self._owners.get_by_id, owner_id, id_property="id")
            owner = Owner(
                id=str(found.id),
                email=found.email,
                name=" ".join(n for n in (found.first_name, found.last_name) if n) or None,
            )
        except CRMError as error:
            if error.kind not in (CRMErrorKind.NOT_FOUND, CRMErrorKind.VALIDATION):
                raise
            # A deactivated owner still owns the record; without an email the engine falls back.
            owner = Owner(id=owner_id, email=None)
        return owner

    # --- calling the client -----------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        kwargs.setdefault("_request_timeout", self._timeout)
        return await loop.run_in_executor(
            self._executor, partial(self._guarded, fn, *args, **kwargs)
        )

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs on the pool: every failure becomes a CRMError before it leaves the thread."""
        # `from None` everywhere: the client's exceptions carry headers we never want re-raised.
        try:
            return fn(*args, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            # Refused, reset, timed out: a write may or may not have landed.
            error = CRMError(CRMErrorKind.TRANSIENT, f"HubSpot unreachable: {type(exc).__name__}")
        except Exception as exc:
            # Each hubspot sub-package has its own ApiException class: go by `.status`.
            status = getattr(exc, "status", None)
            if isinstance(status, int) and status > 0:
                error = self._api_error(
                    status, getattr(exc, "body", None), getattr(exc, "headers", None)
                )
            else:
                error = CRMError(
                    CRMErrorKind.TRANSIENT, f"HubSpot call failed: {type(exc).__name__}"
                )
        level = logging.INFO if error.kind in EXPECTED_KINDS else logging.WARNING
        log.log(level, "hubspot call failed: %s %s", error.status, error.message[:300])
        raise error from None

    def _api_error(self, status: int, body: Any, headers: Any) -> CRMError:
        message = self._scrub(_message(body) or f"HubSpot answered HTTP {status}")
        kind = STATUS_KINDS.get(status, CRMErrorKind.TRANSIENT)
        retry_after = _retry_after(headers) if kind is CRMErrorKind.RATE_LIMITED else None
        return CRMError(kind, message, status=status, retry_after=retry_after)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]") if self._token else text


@dataclasses.dataclass(frozen=True, eq=False)
class _Pending:
    """One activity of a batch create, with the trace id HubSpot echoes back."""

    index: int
    trace: str
    activity_type: str
    properties: dict[str, str]
    association: Any


_BODY_PROPERTIES = {"notes": "hs_note_body", "tasks": "hs_task_body"}


def _by_content(candidates: list[_Pending], properties: Mapping[str, Any]) -> _Pending | None:
    """A result without a trace id: the one input whose body it carries, if exactly one."""
    found = [
        p
        for p in candidates
        if properties.get(_BODY_PROPERTIES[p.activity_type]) is not None
        and properties.get(_BODY_PROPERTIES[p.activity_type])
        == p.properties.get(_BODY_PROPERTIES[p.activity_type])
    ]
    return found[0] if len(found) == 1 else None


def _missing_target(message: str) -> bool:
    return "does not exist" in message or "INVALID_OBJECT_IDS" in message


def _json_body(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call `fn` and parse its answer with `json`, not into the client's models: for the batch
    endpoints on the commit path those cost more CPU than the call (a configuration object per
    record, dateutil for every timestamp). Errors are raised by the client as before."""
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        body = json.loads(response.data or b"{}")
    finally:
        response.release_conn()
    return body if isinstance(body, dict) else {}


def _activity_input(
    object_type: str, record_id: str, activity: Activity
) -> tuple[str, dict[str, str], PublicAssociationsForObject]:
    """(notes|tasks, properties, association to the record) for one activity."""
    activity_type = canonical_type(activity.kind)
    type_id = ASSOCIATION_TYPES.get((activity_type, object_type))
    if type_id is None:
        raise CRMError(
            CRMErrorKind.VALIDATION,
            f"HubSpot cannot associate a {activity.kind} with {object_type}",
        )
    now = _iso(datetime.now(UTC))
    if activity_type == "notes":
        body = f"{activity.subject}\n\n{activity.body}" if activity.subject else activity.body
        properties = {"hs_note_body": body, "hs_timestamp": now}
    else:
        first_line = next(iter(activity.body.splitlines()), "")
        properties = {
            "hs_task_subject": activity.subject or first_line[:200] or "Follow up",
            "hs_task_body": activity.body,
            "hs_task_status": "NOT_STARTED",
            "hs_timestamp": _due(activity.due) if activity.due else now,
        }
    association = PublicAssociationsForObject(
        to=PublicObjectId(id=str(record_id)),
        types=[
            AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=type_id)
        ],
    )
    return activity_type, properties, association


def _changes(entries: Sequence[Any]) -> list[FieldChange]:
    """HubSpot's ValueWithTimestamp entries as FieldChanges, newest first."""
    changes = []
    for entry in entries:
        at = _utc(entry.timestamp)
        if at is None:
            continue  # an entry without a usable time cannot be placed in the history
        user = entry.updated_by_user_id
        changes.append(
            FieldChange(
                value=entry.value,
                at=at,
                source=_source(entry.source_type),
                by=str(user) if user is not None else (entry.source_id or None),
            )
        )
    # HubSpot lists newest first already; the stable sort keeps its order for equal times.
    changes.sort(key=lambda c: c.at, reverse=True)
    return changes


def _source(source_type: str | None) -> str:
    kind = (source_type or "").upper()
    if kind in INTEGRATION_SOURCES:
        return "integration"
    if kind in HUMAN_SOURCES:
        return "human"
    return kind.lower() or "unknown"


def _utc(moment: Any) -> datetime | None:
    """An aware UTC datetime from what the client deserialized (a datetime, or a string)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(moment, datetime):
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _message(body: Any) -> str | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body).strip()[:500] or None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(body)[:500]


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")  # urllib3's headers are case-insensitive
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _wire(value: Any) -> str:
    """HubSpot's wire form of a value: strings, with "" clearing a property."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _due(due: str) -> str:
    """A task's due date: a bare date means midnight UTC on that day."""
    return f"{due}T00:00:00.000Z" if len(due) == 10 else due


def _field_schema(prop: Any) -> FieldSchema:
    meta = prop.modification_metadata
    read_only = bool(meta and meta.read_only_value)
    return FieldSchema(
        name=prop.name,
        label=prop.label or prop.name,
        type=_field_type(prop.type, prop.field_type),
        writable=not read_only and not prop.calculated,
        options=tuple(
            FieldOption(str(o.value), o.label or str(o.value)) for o in prop.options or []
        ),
    )


def _field_type(kind: str | None, field_type: str | None) -> str:
    if kind == "bool" or (kind == "enumeration" and field_type == "booleancheckbox"):
        return "bool"
    if kind == "string":
        return "text" if field_type in ("textarea", "html") else "string"
    if kind in ("number", "date", "datetime", "enumeration"):
        return kind
    return "string"


def _stage_options(pipelines: list[Any]) -> tuple[FieldOption, ...]:
    several = len(pipelines) > 1
    options: dict[str, FieldOption] = {}
    for pipeline in sorted(pipelines, key=lambda p: p.display_order or 0):
        for stage in sorted(pipeline.stages or [], key=lambda s: s.display_order or 0):
            label = f"{stage.label} ({pipeline.label})" if several else stage.label
            options.setdefault(stage.id, FieldOption(stage.id, label))
    return tuple(options.values())
