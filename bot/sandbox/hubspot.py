"""A stateful stand-in for HubSpot's CRM v3 API, reached over real HTTP.

It serves the endpoints the HubSpot adapter uses (objects, batch read/update, search, notes and
tasks with associations, owners, properties, pipelines) in HubSpot's own wire shapes, and refuses
what HubSpot refuses: unknown or read-only properties, values outside an enumeration, malformed
numbers and dates, oversized batches and search pages, bad tokens. Values are stored as strings,
every write is kept in a per-property history, and tests reach the state directly through the
helpers at the bottom (`human_edit`, `value`, `history`, `activities`, schema changes).
"""

from __future__ import annotations

import json
import operator
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from bot.sandbox import seed
from bot.sandbox.base import Handler, StandIn

BATCH_LIMIT = 100
BATCH_HISTORY_LIMIT = 50  # batch read with propertiesWithHistory
SEARCH_LIMIT = 200  # results per search page
SEARCH_WINDOW = 10_000  # a search pages through at most this many results
SEARCH_GROUPS, SEARCH_GROUP_FILTERS, SEARCH_FILTERS = 5, 10, 25
SEARCH_OPERATORS = {
    "EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN",
    "HAS_PROPERTY", "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN",
}  # fmt: skip
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": operator.eq, "NEQ": operator.ne, "LT": operator.lt,
    "LTE": operator.le, "GT": operator.gt, "GTE": operator.ge,
}  # fmt: skip

OBJECT_ALIASES = {
    "contact": "contacts", "0-1": "contacts",
    "company": "companies", "0-2": "companies",
    "deal": "deals", "0-3": "deals",
    "note": "notes", "0-46": "notes",
    "task": "tasks", "0-27": "tasks",
}  # fmt: skip
OBJECT_NAMES = {
    "contacts": "CONTACT",
    "companies": "COMPANY",
    "deals": "DEAL",
    "notes": "NOTE",
    "tasks": "TASK",
}

# HUBSPOT_DEFINED association type ids: (from, to) -> id.
ASSOCIATION_TYPES: dict[tuple[str, str], int] = {
    ("notes", "deals"): 214, ("notes", "contacts"): 202, ("notes", "companies"): 190,
    ("tasks", "deals"): 216, ("tasks", "contacts"): 204, ("tasks", "companies"): 192,
}  # fmt: skip

# What GET returns when no `properties` are asked for, besides the ones always returned.
DEFAULT_PROPERTIES = {
    "deals": ("dealname", "amount", "closedate", "pipeline", "dealstage"),
    "contacts": ("firstname", "lastname", "email"),
    "companies": ("name", "domain"),
    "notes": ("hs_note_body", "hs_timestamp"),
    "tasks": ("hs_task_subject", "hs_task_status", "hs_timestamp"),
}
ALWAYS_RETURNED = ("hs_object_id", "createdate", "hs_lastmodifieddate", "lastmodifieddate")
REQUIRED_ON_CREATE = {"notes": ("hs_timestamp",), "tasks": ("hs_timestamp",)}

# Property definitions: (name, label, type, fieldType[, options as (value, label)]).
COMMON_PROPERTIES = (
    ("hs_object_id", "Record ID", "number", "number"),
    ("createdate", "Create Date", "datetime", "date"),
    ("hs_lastmodifieddate", "Last Modified Date", "datetime", "date"),
    ("hubspot_owner_id", "Owner", "enumeration", "select"),
)
YES_NO = (("true", "Yes"), ("false", "No"))
PROPERTIES: dict[str, tuple[tuple[Any, ...], ...]] = {
    "deals": (
        ("dealname", "Deal Name", "string", "text"),
        ("dealstage", "Deal Stage", "enumeration", "radio", seed.DEAL_STAGES),
        ("pipeline", "Pipeline", "enumeration", "select", (("default", "Sales Pipeline"),)),
        ("amount", "Amount", "number", "number"),
        ("closedate", "Close Date", "datetime", "date"),
        ("description", "Deal Description", "string", "textarea"),
        ("hs_next_step", "Next Step", "string", "textarea"),
        ("hs_forecast_category", "Forecast category", "enumeration", "select", (
            ("PIPELINE", "Pipeline"), ("BEST_CASE", "Best case"), ("COMMIT", "Commit"),
            ("CLOSED", "Closed won"), ("OMIT", "Not forecasted"),
        )),
        ("hs_priority", "Priority", "enumeration", "select",
         (("low", "Low"), ("medium", "Medium"), ("high", "High"))),
        ("renewal_date", "Renewal date", "date", "date"),
        ("hs_is_closed", "Is Closed", "bool", "booleancheckbox", YES_NO),
        ("days_to_close", "Days to close", "number", "number"),
    ),
    "contacts": (
        ("firstname", "First Name", "string", "text"),
        ("lastname", "Last Name", "string", "text"),
        ("email", "Email", "string", "text"),
        ("jobtitle", "Job Title", "string", "text"),
        ("phone", "Phone Number", "string", "phonenumber"),
        ("city", "City", "string", "text"),
        ("lastmodifieddate", "Last Modified Date", "datetime", "date"),
        ("hs_lead_status", "Lead Status", "enumeration", "radio", (
            ("NEW", "New"), ("OPEN", "Open"), ("IN_PROGRESS", "In Progress"),
            ("OPEN_DEAL", "Open Deal"), ("UNQUALIFIED", "Unqualified"),
            ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"), ("CONNECTED", "Connected"),
            ("BAD_TIMING", "Bad Timing"),
        )),
        ("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", (
            ("subscriber", "Subscriber"), ("lead", "Lead"),
            ("marketingqualifiedlead", "Marketing Qualified Lead"),
            ("salesqualifiedlead", "Sales Qualified Lead"), ("opportunity", "Opportunity"),
            ("customer", "Customer"), ("evangelist", "Evangelist"), ("other", "Other"),
        )),
    ),
    "companies": (
        ("name", "Company name", "string", "text"),
        ("domain", "Company Domain Name", "string", "text"),
        ("industry", "Industry", "enumeration", "select", (
            ("COMPUTER_SOFTWARE", "Computer Software"),
            ("INFORMATION_TECHNOLOGY_AND_SERVICES", "Information Technology and Services"),
            ("FINANCIAL_SERVICES", "Financial Services"), ("RETAIL", "Retail"),
            ("HOSPITAL_HEALTH_CARE", "Hospital & Health Care"),
            ("MARKETING_AND_ADVERTISING", "Marketing and Advertising"),
        )),
        ("numberofemployees", "Number of Employees", "number", "number"),
        ("annualrevenue", "Annual Revenue", "number", "number"),
        ("city", "City", "string", "text"),
        ("is_public", "Is Public", "bool", "booleancheckbox", YES_NO),
    ),
    "notes": (
        ("hs_note_body", "Note body", "string", "html"),
        ("hs_timestamp", "Activity date", "datetime", "date"),
    ),
    "tasks": (
        ("hs_task_subject", "Task Title", "string", "text"),
        ("hs_task_body", "Notes", "string", "html"),
        ("hs_task_status", "Task Status", "enumeration", "select", (
            ("NOT_STARTED", "Not Started"), ("IN_PROGRESS", "In Progress"), ("WAITING", "Waiting"),
            ("COMPLETED", "Completed"), ("DEFERRED", "Deferred"),
        )),
        ("hs_task_priority", "Priority", "enumeration", "select",
         (("NONE", "None"), ("LOW", "Low"), ("MEDIUM", "Medium"), ("HIGH", "High"))),
        ("hs_task_type", "Task Type", "enumeration", "select",
         (("TODO", "To-do"), ("CALL", "Call"), ("EMAIL", "Email"))),
        ("hs_timestamp", "Due date", "datetime", "date"),
    ),
}  # fmt: skip
READ_ONLY = {"hs_object_id", "createdate", "hs_lastmodifieddate", "lastmodifieddate"}
CALCULATED = {"hs_is_closed", "days_to_close"}
CUSTOM = {"renewal_date"}  # not hubspotDefined

APP_ID = "2891357"  # the private app our token belongs to: the sourceId of API writes
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def iso(moment: datetime) -> str:
    """HubSpot's timestamp format: millisecond precision, UTC, `Z`."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class StoredObject:
    """One CRM object as the stand-in holds it: a record, a note or a task."""

    object_type: str
    id: str
    properties: dict[str, str | None]
    created_at: datetime
    updated_at: datetime
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    associations: list[tuple[str, str, int]] = field(default_factory=list)  # (type, id, type id)
    archived: bool = False
    archived_at: datetime | None = None


class HubSpotStandIn(StandIn):
    name = "hubspot"

    def __init__(self, token: str | None = "sandbox-hubspot-token", *, seed: bool = True) -> None:
        self.objects: dict[str, dict[str, StoredObject]] = {t: {} for t in OBJECT_NAMES}
        self.schemas: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_NAMES}
        self.owners: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, list[dict[str, Any]]] = {}
        self._next_id = 40_000_001
        # HubSpot does not promise batch results in input order: neither does the stand-in.
        self._batch_order = random.Random(20_240_601)
        super().__init__(token=token)
        self._base_schemas()
        if seed:
            self._load_seed()

    # --- HubSpot's error shapes -------------------------------------------------------------
    def error_response(self, status: int, message: str, code: str) -> web.Response:
        return self._error(status, message, code)

    def unauthorized(self, request: web.Request) -> web.Response:
        return self._error(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION")

    def rate_limited_response(self, retry_after: float) -> web.Response:
        body = {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "TEN_SECONDLY_ROLLING",
            "groupName": f"publicapi:private-app:{APP_ID}",
        }
        resp = web.json_response(body, status=429)
        resp.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return resp

    @staticmethod
    def _error(status: int, message: str, category: str, **extra: Any) -> web.Response:
        body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4())}
        body.update(category=category, **extra)
        return web.json_response(body, status=status)

    def _validation_failed(self, errors: list[dict[str, Any]]) -> web.Response:
        text = json.dumps(errors, separators=(",", ":"))
        return self._error(400, f"Property values were not valid: {text}", "VALIDATION_ERROR")

    def _not_found(self, object_type: str, object_id: str) -> web.Response:
        return self._error(
            404,
            "Object not found.  objectId are usually numeric.",
            "OBJECT_NOT_FOUND",
            context={"id": [object_id], "objectType": [OBJECT_NAMES[object_type]]},
        )

    # --- routes -----------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        # Inside the base middleware, so refused requests are still logged and counted.
        app.middlewares.append(self._refusals)
        objects = "/crm/v3/objects/{type}"
        app.router.add_post(objects + "/batch/read", self._batch_read)
        app.router.add_post(objects + "/batch/update", self._batch_update)
        app.router.add_post(objects + "/batch/create", self._batch_create)
        app.router.add_post(objects + "/search", self._search)
        app.router.add_post(objects, self._create)
        app.router.add_get(objects + "/{id}", self._get)
        app.router.add_patch(objects + "/{id}", self._patch)
        app.router.add_delete(objects + "/{id}", self._archive)
        app.router.add_get("/crm/v3/owners", self._list_owners)
        app.router.add_get("/crm/v3/owners/", self._list_owners)
        app.router.add_get("/crm/v3/owners/{id}", self._get_owner)
        app.router.add_get("/crm/v3/properties/{type}", self._list_properties)
        app.router.add_get("/crm/v3/properties/{type}/{name}", self._get_property)
        app.router.add_get("/crm/v3/pipelines/{type}", self._list_pipelines)

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return refusal.response

    def _object_type(self, request: web.Request) -> str:
        raw = request.match_info["type"]
        object_type = OBJECT_ALIASES.get(raw.lower(), raw.lower())
        if object_type not in self.objects:
            raise _Refusal(
                self._error(400, f"Unable to infer object type from: {raw}", "VALIDATION_ERROR")
            )
        return object_type

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise _Refusal(
                self._error(400, "Invalid input JSON on line 1, column 1", "VALIDATION_ERROR")
            )
        return body

    @staticmethod
    def _names(values: Iterable[str]) -> list[str]:
        """`properties=a&properties=b` and `properties=a,b` both name several properties."""
        return [n.strip() for v in values for n in v.split(",") if n.strip()]

    @staticmethod
    def _flag(value: str | None) -> bool:
        return (value or "").lower() == "true"

    def _find(
        self, object_type: str, object_id: str, archived: bool = False
    ) -> StoredObject | None:
        obj = self.objects[object_type].get(str(object_id))
        return obj if obj is not None and obj.archived == archived else None

    async def _get(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        obj = self._find(
            object_type, request.match_info["id"], self._flag(request.query.get("archived"))
        )
        if obj is None:
            return self._not_found(object_type, request.match_info["id"])
        props = self._names(request.query.getall("properties", []))
        history = self._names(request.query.getall("propertiesWithHistory", []))
        return web.json_response(self._object_json(obj, props or None, history))

    async def _patch(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        obj = self._find(object_type, request.match_info["id"])
        if obj is None:
            return self._not_found(object_type, request.match_info["id"])
        values, errors = self._validate(object_type, body.get("properties") or {}, obj)
        if errors:
            return self._validation_failed(errors)
        self._write(obj, values, source_type="INTEGRATION", source_id=APP_ID)
        return web.json_response(self._object_json(obj, list(values)))

    async def _archive(self, request: web.Request) -> web.Response:
        # HubSpot answers 204 whether or not the object existed.
        obj = self._find(self._object_type(request), request.match_info["id"])
        if obj is not None:
            obj.archived, obj.archived_at = True, _now()
        return web.Response(status=204)

    async def _create(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        values, errors = self._create_values(object_type, body.get("properties") or {})
        if errors:
            return self._validation_failed(errors)
        associations, refusal = self._associations(object_type, body.get("associations") or [])
        if refusal is not None:
            return self._error(400, **refusal)
        obj = self._new_object(object_type)
        obj.associations = associations
        self._write(obj, values, source_type="INTEGRATION", source_id=APP_ID)
        return web.json_response(self._object_json(obj, list(values)), status=201)

    def _create_values(
        self, object_type: str, props: Mapping[str, Any]
    ) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
        """The checks on a create's properties: those of any write, and the required ones."""
        values, errors = self._validate(object_type, props, None)
        errors += [
            {
                "isValid": False,
                "message": f"{name} is required",
                "error": "REQUIRED_PROPERTY",
                "name": name,
                "localizedErrorMessage": f"{name} is required",
            }
            for name in REQUIRED_ON_CREATE.get(object_type, ())
            if not values.get(name)
        ]
        return values, errors

    def _associations(
        self, object_type: str, raw: Any
    ) -> tuple[list[tuple[str, str, int]], dict[str, Any] | None]:
        """(associations, None), or ([], HubSpot's error fields) when one is invalid."""
        associations: list[tuple[str, str, int]] = []
        for assoc in raw if isinstance(raw, list) else []:
            to_id = str((assoc.get("to") or {}).get("id", ""))
            for spec in assoc.get("types") or []:
                type_id = spec.get("associationTypeId")
                to_type = next(
                    (
                        t
                        for (f, t), i in ASSOCIATION_TYPES.items()
                        if f == object_type and i == type_id
                    ),
                    None,
                )
                if spec.get("associationCategory") != "HUBSPOT_DEFINED" or to_type is None:
                    return [], {
                        "message": f"{spec.get('associationCategory')} association type "
                        f"{type_id} is not valid for {object_type}",
                        "category": "VALIDATION_ERROR",
                        "subCategory": "crm.associations.INVALID_ASSOCIATION_TYPE",
                    }
                if self._find(to_type, to_id) is None:
                    return [], {
                        "message": "One or more associations are invalid: "
                        f"{to_type} {to_id} does not exist",
                        "category": "VALIDATION_ERROR",
                        "subCategory": "crm.associations.INVALID_OBJECT_IDS",
                        "context": {"ids": [to_id]},
                    }
                associations.append((to_type, to_id, type_id))
        return associations, None

    async def _batch_create(self, request: web.Request) -> web.Response:
        """POST /crm/v3/objects/{type}/batch/create. Properties are checked for the whole batch
        first (one bad value refuses it all with a 400 naming no input, as batch update does);
        associations are checked input by input, and an input with an invalid one fails alone
        in a 207 whose error names it by `objectWriteTraceId`. Results carry the input's
        `objectWriteTraceId` and, as HubSpot does not promise, are not in input order."""
        object_type = self._object_type(request)
        body = await self._json(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            return self._error(400, "Invalid input JSON on line 1, column 1", "VALIDATION_ERROR")
        if len(inputs) > BATCH_LIMIT:
            return self._too_many(len(inputs), BATCH_LIMIT)
        started = _now()
        planned, errors = [], []
        for item in inputs:
            values, errs = self._create_values(object_type, item.get("properties") or {})
            errors += errs
            planned.append((item, values))
        if errors:
            return self._validation_failed(errors)
        results: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for item, values in planned:
            trace = item.get("objectWriteTraceId")
            associations, refusal = self._associations(object_type, item.get("associations"))
            if refusal is not None:
                context = dict(refusal.pop("context", {}))
                if trace is not None:
                    context["objectWriteTraceId"] = [str(trace)]
                failures.append(
                    {"status": "error", "context": context, "links": {}, "errors": [], **refusal}
                )
                continue
            obj = self._new_object(object_type)
            obj.associations = associations
            self._write(obj, values, source_type="INTEGRATION", source_id=APP_ID)
            result = self._object_json(obj, list(values))
            if trace is not None:
                result["objectWriteTraceId"] = str(trace)
            results.append(result)
        self._batch_order.shuffle(results)
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": iso(started),
            "completedAt": iso(_now()),
        }
        if not failures:
            return web.json_response(answer, status=201)
        answer.update(numErrors=len(failures), errors=failures)
        return web.json_response(answer, status=207)

    async def _batch_read(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        inputs = body.get("inputs") or []
        history = list(body.get("propertiesWithHistory") or [])
        limit = BATCH_HISTORY_LIMIT if history else BATCH_LIMIT
        if len(inputs) > limit:
            return self._too_many(len(inputs), limit)
        started = _now()
        archived = self._flag(request.query.get("archived"))
        results, missing = [], []
        for item in inputs:
            object_id = str(item.get("id", ""))
            obj = self._find(object_type, object_id, archived)
            if obj is None:
                missing.append(object_id)
            else:
                results.append(
                    self._object_json(obj, list(body.get("properties") or []) or None, history)
                )
        return self._batch_response(object_type, started, results, missing, "get")

    async def _batch_update(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        inputs = body.get("inputs") or []
        if len(inputs) > BATCH_LIMIT:
            return self._too_many(len(inputs), BATCH_LIMIT)
        ids = [str(item.get("id", "")) for item in inputs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            return self._error(
                400,
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique",
                "VALIDATION_ERROR",
            )
        started = _now()
        # HubSpot validates the whole batch first: one bad value refuses it all, naming no record.
        planned, errors = [], []
        for object_id, item in zip(ids, inputs, strict=True):
            obj = self._find(object_type, object_id)
            values, errs = self._validate(object_type, item.get("properties") or {}, obj)
            errors += errs
            planned.append((object_id, obj, values))
        if errors:
            return self._validation_failed(errors)
        results, missing = [], []
        for object_id, obj, values in planned:
            if obj is None:
                missing.append(object_id)
                continue
            self._write(obj, values, source_type="INTEGRATION", source_id=APP_ID)
            results.append(self._object_json(obj, list(values)))
        return self._batch_response(object_type, started, results, missing, "update")

    async def _search(self, request: web.Request) -> web.Response:
        """POST /crm/v3/objects/{type}/search: filterGroups (ORed; filters within a group ANDed),
        query, sorts, properties, limit (at most 200) and after; answers total and one page."""
        object_type = self._object_type(request)
        body = await self._json(request)
        try:
            limit = int(body["limit"]) if body.get("limit") is not None else 10
            start = int(body.get("after") or 0)
            groups = list(body.get("filterGroups") or [])
            if not all(
                isinstance(g, dict) and isinstance(g.get("filters", []), list) for g in groups
            ):
                raise ValueError("filterGroups")
        except (TypeError, ValueError):
            return self._error(400, "Invalid input JSON on line 1, column 1", "VALIDATION_ERROR")
        if limit > SEARCH_LIMIT or limit < 0:
            return self._error(
                400,
                f"Invalid limit: {limit}. The limit must be between 0 and {SEARCH_LIMIT}.",
                "VALIDATION_ERROR",
            )
        if start + limit > SEARCH_WINDOW:
            return self._error(
                400,
                f"Search results are limited to {SEARCH_WINDOW}: after + limit is {start + limit}.",
                "VALIDATION_ERROR",
            )
        count = sum(len(g.get("filters") or []) for g in groups)
        if (
            len(groups) > SEARCH_GROUPS
            or count > SEARCH_FILTERS
            or any(len(g.get("filters") or []) > SEARCH_GROUP_FILTERS for g in groups)
        ):
            return self._error(
                400,
                f"Too many filters: at most {SEARCH_GROUPS} filterGroups, {SEARCH_GROUP_FILTERS} "
                f"filters in a group and {SEARCH_FILTERS} in all.",
                "VALIDATION_ERROR",
            )
        for group in groups:
            for flt in group.get("filters") or []:
                if flt.get("operator") not in SEARCH_OPERATORS:
                    return self._error(
                        400,
                        f"Invalid filter operator: {flt.get('operator')}",
                        "VALIDATION_ERROR",
                    )
        schema = self.schemas[object_type]
        found = [
            obj
            for obj in self.objects[object_type].values()
            if not obj.archived
            and (not groups or any(self._matches(obj, schema, g) for g in groups))
            and self._matches_query(obj, str(body.get("query") or ""))
        ]
        found.sort(key=lambda o: int(o.id) if o.id.isdigit() else 0)
        for sort in reversed(body.get("sorts") or []):
            name, descending = _sort_spec(sort)
            prop = schema.get(name)
            keyed = [
                (_sort_key(prop, o.properties[name]), o)
                for o in found
                if o.properties.get(name) not in (None, "")
            ]
            absent = [o for o in found if o.properties.get(name) in (None, "")]
            try:
                keyed.sort(key=operator.itemgetter(0), reverse=descending)
            except TypeError:  # mixed numbers and text: order as text
                keyed.sort(key=lambda pair: str(pair[0]), reverse=descending)
            found = [o for _, o in keyed] + absent  # records without a value come last
        props = list(body.get("properties") or []) or None
        page = found[start : start + limit]
        answer: dict[str, Any] = {
            "total": len(found),
            "results": [self._object_json(o, props) for o in page],
        }
        if start + limit < len(found):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        return web.json_response(answer)

    @staticmethod
    def _matches(obj: StoredObject, schema: Mapping[str, Any], group: Mapping[str, Any]) -> bool:
        for flt in group.get("filters") or []:
            name = str(flt.get("propertyName", ""))
            have = obj.properties.get(name)
            op = flt["operator"]
            if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
                if (have not in (None, "")) != (op == "HAS_PROPERTY"):
                    return False
                continue
            if have in (None, ""):
                if op not in ("NEQ", "NOT_IN", "NOT_CONTAINS_TOKEN"):
                    return False
                continue
            prop = schema.get(name)
            key = _sort_key(prop, have)
            if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
                token = re.escape(str(flt.get("value", "")).lower()).replace(r"\*", ".*")
                hit = re.search(token, str(have).lower()) is not None
                if hit != (op == "CONTAINS_TOKEN"):
                    return False
                continue
            if op in ("IN", "NOT_IN"):
                values = [_sort_key(prop, v) for v in flt.get("values") or []]
                if (key in values) != (op == "IN"):
                    return False
                continue
            want = _sort_key(prop, flt.get("value", ""))
            try:
                if op == "BETWEEN":
                    ok = want <= key <= _sort_key(prop, flt.get("highValue", ""))
                else:
                    ok = COMPARISONS[op](key, want)
            except TypeError:  # a number compared with text: no match
                ok = False
            if not ok:
                return False
        return True

    @staticmethod
    def _matches_query(obj: StoredObject, query: str) -> bool:
        if not query:
            return True
        words = query.lower().split()
        text = " ".join(str(v) for v in obj.properties.values() if v).lower()
        return all(w in text for w in words)

    def _too_many(self, count: int, limit: int) -> web.Response:
        return self._error(
            400, f"Too many inputs: {count}. The maximum batch size is {limit}.", "VALIDATION_ERROR"
        )

    def _batch_response(
        self,
        object_type: str,
        started: datetime,
        results: list[dict[str, Any]],
        missing: list[str],
        verb: str,
    ) -> web.Response:
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": iso(started),
            "completedAt": iso(_now()),
        }
        if not missing:
            return web.json_response(body)
        name = OBJECT_NAMES[object_type]
        body["numErrors"] = 1
        body["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"Could not {verb} some {name} objects, they may be deleted or not "
                "exist. Check that ids are valid.",
                "context": {"ids": missing},
                "links": {},
                "errors": [],
            }
        ]
        return web.json_response(body, status=207)

    async def _list_owners(self, request: web.Request) -> web.Response:
        email = request.query.get("email")
        archived = self._flag(request.query.get("archived"))
        owners = [
            o
            for o in self.owners.values()
            if o["archived"] == archived and (email is None or o["email"].lower() == email.lower())
        ]
        start = int(request.query.get("after") or 0)
        limit = min(int(request.query.get("limit") or 100), 500)
        body: dict[str, Any] = {"results": owners[start : start + limit]}
        if start + limit < len(owners):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return web.json_response(body)

    async def _get_owner(self, request: web.Request) -> web.Response:
        owner_id = request.match_info["id"]
        key = "userId" if request.query.get("idProperty") == "userId" else "id"
        archived = self._flag(request.query.get("archived"))
        for owner in self.owners.values():
            if str(owner[key]) == owner_id and owner["archived"] == archived:
                return web.json_response(owner)
        return self._error(404, f"Owner with {key} {owner_id} not found", "OBJECT_NOT_FOUND")

    async def _list_properties(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        return web.json_response({"results": list(self.schemas[object_type].values())})

    async def _get_property(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        prop = self.schemas[object_type].get(request.match_info["name"])
        if prop is None:
            return self._error(
                404,
                f"Unable to find property {request.match_info['name']}",
                "OBJECT_NOT_FOUND",
            )
        return web.json_response(prop)

    async def _list_pipelines(self, request: web.Request) -> web.Response:
        return web.json_response({"results": self.pipelines.get(self._object_type(request), [])})

    # --- the model ----------------------------------------------------------------------------
    def _object_json(
        self, obj: StoredObject, props: Sequence[str] | None, history: Sequence[str] = ()
    ) -> dict[str, Any]:
        schema = self.schemas[obj.object_type]
        names = (
            list(props) if props is not None else list(DEFAULT_PROPERTIES.get(obj.object_type, ()))
        )
        # Unknown properties asked for are ignored, as HubSpot does.
        shown = {n: obj.properties.get(n) for n in (*names, *ALWAYS_RETURNED) if n in schema}
        body: dict[str, Any] = {
            "id": obj.id,
            "properties": shown,
            "createdAt": iso(obj.created_at),
            "updatedAt": iso(obj.updated_at),
            "archived": obj.archived,
        }
        if obj.archived_at is not None:
            body["archivedAt"] = iso(obj.archived_at)
        if history:
            body["propertiesWithHistory"] = {
                n: list(obj.history.get(n, [])) for n in history if n in schema
            }
        return body

    def _new_object(self, object_type: str, object_id: str | None = None) -> StoredObject:
        if object_id is None:
            object_id, self._next_id = str(self._next_id), self._next_id + 1
        now = _now()
        obj = StoredObject(object_type, object_id, {}, now, now)
        obj.properties.update(
            hs_object_id=object_id, createdate=iso(now), hs_lastmodifieddate=iso(now)
        )
        self.objects[object_type][object_id] = obj
        return obj

    def _write(
        self,
        obj: StoredObject,
        values: Mapping[str, str | None],
        *,
        source_type: str,
        source_id: str | None = None,
        user_id: int | None = None,
        at: datetime | None = None,
    ) -> None:
        now = at or _now()
        for name, value in values.items():
            obj.properties[name] = value
            entry: dict[str, Any] = {
                "value": value or "",
                "timestamp": iso(now),
                "sourceType": source_type,
            }
            if source_id is not None:
                entry["sourceId"] = source_id
            if user_id is not None:
                entry["updatedByUserId"] = user_id
            obj.history.setdefault(name, []).insert(0, entry)
        obj.properties["hs_lastmodifieddate"] = iso(now)
        if obj.object_type == "contacts":
            obj.properties["lastmodifieddate"] = iso(now)
        obj.updated_at = now

    def _validate(
        self, object_type: str, props: Mapping[str, Any], obj: StoredObject | None
    ) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
        """HubSpot's checks on a write: (normalised string values, HubSpot's error entries)."""
        schema = self.schemas[object_type]
        values: dict[str, str | None] = {}
        errors: list[dict[str, Any]] = []

        def refuse(name: str, code: str, message: str) -> None:
            errors.append(
                {
                    "isValid": False,
                    "message": message,
                    "error": code,
                    "name": name,
                    "localizedErrorMessage": message,
                }
            )

        pipeline = str(
            props.get("pipeline") or (obj.properties.get("pipeline") if obj else None) or "default"
        )
        for name, raw in props.items():
            prop = schema.get(name)
            if prop is None:
                refuse(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
                continue
            if prop["modificationMetadata"]["readOnlyValue"]:
                refuse(
                    name,
                    "READ_ONLY_VALUE",
                    f'"{name}" is a read only property; its value cannot be set.',
                )
                continue
            if raw is None or raw == "":
                values[name] = ""  # clears the property
                continue
            try:
                values[name] = self._coerce(object_type, prop, raw, pipeline)
            except _Invalid as bad:
                refuse(name, bad.code, bad.message)
        return values, errors

    def _coerce(self, object_type: str, prop: dict[str, Any], raw: Any, pipeline: str) -> str:
        kind, text = prop["type"], _text(raw)
        if kind == "number":
            try:
                if isinstance(raw, bool) or not Decimal(text).is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                raise _Invalid("INVALID_DOUBLE", f"{text} was not a valid number.") from None
            return text
        if kind == "date":
            moment = _parse_moment(raw)
            if moment is None:
                raise _Invalid("INVALID_DATE", f"{text} is not a valid date.")
            if moment.time() != time(0):
                raise _Invalid(
                    "INVALID_DATE",
                    f"{text} is at {moment.hour}:{moment.minute}:{moment.second}."
                    f"{moment.microsecond // 1000} UTC, not midnight!",
                )
            return moment.date().isoformat()
        if kind == "datetime":
            moment = _parse_moment(raw)
            if moment is None:
                raise _Invalid("INVALID_DATETIME", f"{text} is not a valid datetime.")
            return iso(moment)
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise _Invalid("INVALID_BOOLEAN", f"{text} was not a valid boolean: [true, false]")
            return text.lower()
        if kind == "enumeration":
            allowed = self._allowed_options(object_type, prop, pipeline)
            chosen = text.split(";") if prop["fieldType"] == "checkbox" else [text]
            if any(choice not in allowed for choice in chosen):
                raise _Invalid(
                    "INVALID_OPTION",
                    f"{text} was not one of the allowed options: [{', '.join(allowed)}]",
                )
            return text
        return text

    def _allowed_options(self, object_type: str, prop: dict[str, Any], pipeline: str) -> list[str]:
        name = prop["name"]
        if name == "hubspot_owner_id":
            return [o["id"] for o in self.owners.values() if not o["archived"]]
        if object_type == "deals" and name == "dealstage":
            for p in self.pipelines.get("deals", []):
                if p["id"] == pipeline:
                    return [s["id"] for s in p["stages"]]
            return []
        if object_type == "deals" and name == "pipeline":
            return [p["id"] for p in self.pipelines.get("deals", [])]
        return [o["value"] for o in prop["options"]]

    # --- schema and seed --------------------------------------------------------------------
    def _base_schemas(self) -> None:
        for object_type in OBJECT_NAMES:
            for name, label, kind, field_type in COMMON_PROPERTIES:
                self.add_property(
                    object_type,
                    name,
                    label=label,
                    type=kind,
                    field_type=field_type,
                    read_only=name in READ_ONLY,
                    external_options=name == "hubspot_owner_id",
                )
        for object_type, props in PROPERTIES.items():
            for name, label, kind, field_type, *options in props:
                self.add_property(
                    object_type,
                    name,
                    label=label,
                    type=kind,
                    field_type=field_type,
                    options=options[0] if options else (),
                    read_only=name in READ_ONLY or name in CALCULATED,
                    calculated=name in CALCULATED,
                    external_options=name in ("dealstage", "pipeline"),
                    hubspot_defined=name not in CUSTOM,
                )
        self.pipelines["deals"] = [self._pipeline("default", "Sales Pipeline", seed.DEAL_STAGES)]

    def _pipeline(
        self, pipeline_id: str, label: str, stages: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        now = iso(_now())
        return {
            "id": pipeline_id,
            "label": label,
            "displayOrder": len(self.pipelines.get("deals", [])),
            "archived": False,
            "createdAt": now,
            "updatedAt": now,
            "stages": [self._stage(s, lbl, i) for i, (s, lbl) in enumerate(stages)],
        }

    @staticmethod
    def _stage(stage_id: str, label: str, order: int) -> dict[str, Any]:
        closed = stage_id in ("closedwon", "closedlost")
        probability = {"closedwon": 1.0, "closedlost": 0.0}.get(
            stage_id, min(0.2 * (order + 1), 0.9)
        )
        now = iso(_now())
        return {
            "id": stage_id,
            "label": label,
            "displayOrder": order,
            "metadata": {"isClosed": str(closed).lower(), "probability": f"{probability:.1f}"},
            "archived": False,
            "createdAt": now,
            "updatedAt": now,
            "writePermissions": "CRUD",
        }

    def _load_seed(self) -> None:
        now = iso(_now())
        for person in seed.OWNERS:
            self.owners[person.owner_id] = {
                "id": person.owner_id,
                "email": person.email,
                "firstName": person.first,
                "lastName": person.last,
                "userId": _user_id(person.owner_id),
                "userIdIncludingInactive": _user_id(person.owner_id),
                "type": "PERSON",
                "archived": False,
                "createdAt": now,
                "updatedAt": now,
                "teams": [],
            }
        created = _now() - timedelta(days=30)
        for object_type, records in seed.RECORDS.items():
            for record_id, props in records.items():
                obj = self._new_object(object_type, record_id)
                obj.created_at = created
                obj.properties["createdate"] = iso(created)
                self._write(
                    obj,
                    {k: v for k, v in props.items() if v is not None},
                    source_type="CRM_UI",
                    source_id=f"userId:{_user_id(props.get('hubspot_owner_id') or '101')}",
                    user_id=_user_id(props.get("hubspot_owner_id") or "101"),
                    at=created,
                )

    # --- helpers for tests (no HTTP) --------------------------------------------------------
    def add_property(
        self,
        object_type: str,
        name: str,
        *,
        label: str | None = None,
        type: str = "string",
        field_type: str = "text",
        options: Iterable[tuple[str, str]] = (),
        read_only: bool = False,
        calculated: bool = False,
        external_options: bool = False,
        hubspot_defined: bool = True,
    ) -> dict[str, Any]:
        now = iso(_now())
        prop = {
            "name": name,
            "label": label or name,
            "type": type,
            "fieldType": field_type,
            "description": "",
            "groupName": f"{object_type[:-1]}information",
            "options": [
                {"label": lbl, "value": value, "displayOrder": i, "hidden": False}
                for i, (value, lbl) in enumerate(options)
            ],
            "displayOrder": len(self.schemas[object_type]),
            "calculated": calculated,
            "externalOptions": external_options,
            "hasUniqueValue": name == "hs_object_id",
            "hidden": False,
            "formField": not read_only,
            "hubspotDefined": hubspot_defined,
            "modificationMetadata": {
                "archivable": not hubspot_defined,
                "readOnlyDefinition": hubspot_defined,
                "readOnlyValue": read_only,
            },
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }
        if name == "hubspot_owner_id":
            prop["referencedObjectType"] = "OWNER"
        self.schemas[object_type][name] = prop
        return prop

    def rename_property(
        self, object_type: str, old: str, new: str, *, label: str | None = None
    ) -> None:
        """Schema drift: the property (and its values and history) now answers to `new`."""
        prop = self.schemas[object_type].pop(old)
        prop.update(name=new, label=label or prop["label"], updatedAt=iso(_now()))
        self.schemas[object_type][new] = prop
        for obj in self.objects[object_type].values():
            if old in obj.properties:
                obj.properties[new] = obj.properties.pop(old)
            if old in obj.history:
                obj.history[new] = obj.history.pop(old)

    def set_read_only(self, object_type: str, name: str, read_only: bool = True) -> None:
        self.schemas[object_type][name]["modificationMetadata"]["readOnlyValue"] = read_only

    def add_pipeline_stage(
        self, object_type: str, pipeline_id: str, stage_id: str, label: str
    ) -> None:
        """A stage added in HubSpot's settings: it shows in the pipelines API, not in the property."""
        pipeline = next(p for p in self.pipelines[object_type] if p["id"] == pipeline_id)
        pipeline["stages"].append(self._stage(stage_id, label, len(pipeline["stages"])))

    def add_record(
        self, object_type: str, properties: Mapping[str, Any], record_id: str | None = None
    ) -> str:
        values, errors = self._validate(object_type, properties, None)
        if errors:
            raise ValueError(errors)
        obj = self._new_object(object_type, record_id)
        self._write(obj, values, source_type="CRM_UI", user_id=_user_id("101"))
        return obj.id

    def human_edit(
        self,
        object_type: str,
        record_id: str,
        prop: str,
        value: Any,
        user_id: int | None = None,
    ) -> None:
        """A person edits the record in HubSpot's UI (sourceType CRM_UI)."""
        object_type = OBJECT_ALIASES.get(object_type, object_type)
        obj = self.objects[object_type][str(record_id)]
        values, errors = self._validate(object_type, {prop: value}, obj)
        if errors:
            raise ValueError(errors[0]["message"])
        user_id = user_id or _user_id("101")
        self._write(
            obj, values, source_type="CRM_UI", source_id=f"userId:{user_id}", user_id=user_id
        )

    def value(self, object_type: str, record_id: str, prop: str) -> str | None:
        object_type = OBJECT_ALIASES.get(object_type, object_type)
        return self.objects[object_type][str(record_id)].properties.get(prop)

    def history(self, object_type: str, record_id: str, prop: str) -> list[dict[str, Any]]:
        """The property's history, newest first, as propertiesWithHistory returns it."""
        object_type = OBJECT_ALIASES.get(object_type, object_type)
        return list(self.objects[object_type][str(record_id)].history.get(prop, []))

    @property
    def activities(self) -> list[StoredObject]:
        """Every note and task created (archived ones included, with `archived` set)."""
        found = [*self.objects["notes"].values(), *self.objects["tasks"].values()]
        return sorted(found, key=lambda o: int(o.id))


class _Refusal(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _user_id(owner_id: str) -> int:
    """The HubSpot user id behind an owner (owners and users have distinct ids in HubSpot)."""
    return 7_000_000 + int(owner_id)


def _text(raw: Any) -> str:
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _sort_spec(sort: Any) -> tuple[str, bool]:
    """(property, descending) from a sort given as "name", "-name" or {propertyName, direction}."""
    if isinstance(sort, Mapping):
        name = str(sort.get("propertyName", ""))
        return name, str(sort.get("direction", "")).upper() == "DESCENDING"
    name = str(sort)
    return (name[1:], True) if name.startswith("-") else (name, False)


def _sort_key(prop: Mapping[str, Any] | None, raw: Any) -> Any:
    """A property value in comparable form: numbers as Decimal, dates as datetimes, text folded."""
    kind = (prop or {}).get("type")
    if kind == "number":
        try:
            return Decimal(str(raw))
        except InvalidOperation:
            return str(raw).lower()
    if kind in ("date", "datetime"):
        return _parse_moment(raw) or str(raw).lower()
    return str(raw).lower()


_EPOCH_MS = re.compile(r"^-?\d{9,}$")


def _parse_moment(raw: Any) -> datetime | None:
    """HubSpot takes ISO 8601 dates and datetimes, or epoch milliseconds."""
    if isinstance(raw, bool):
        return None
    text = str(raw).strip()
    try:
        if isinstance(raw, int | float) or _EPOCH_MS.match(text):
            return datetime.fromtimestamp(int(float(text)) / 1000, UTC)
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), UTC)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
