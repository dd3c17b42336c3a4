"""The Salesforce adapter: the engine's `CRM` port over simple-salesforce's REST client.

simple-salesforce is synchronous (requests), so every call runs on this adapter's own thread pool.
Reads are SOQL `WHERE Id IN (...)` queries; writes are sObject Collections updates
(`PATCH composite/sobjects`, `allOrNone: false`, 200 records a request) whose per-record results
become per-record `CRMError`s. Field history comes from the object's history table
(`OpportunityFieldHistory`, `{Object}History`, `{Custom}__History`); counts from `SELECT COUNT()`.
Nothing untrusted is ever interpolated into SOQL: object types and
field names must be API names, record ids must be 15/18 alphanumerics, and anything else is
refused before a request is made. Writes are never retried here: the engine decides.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError

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

T = TypeVar("T")

BATCH = 200  # sObject Collections limit, and a safe number of ids per SOQL IN list
TIMEOUT = 30.0
_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_PATH = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}(?:\.[A-Za-z][A-Za-z0-9_]{0,79}){0,4}")
_NOT_FOUND_CODES = {"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND", "MALFORMED_ID"}
_TYPES = {
    "picklist": "enumeration",
    "textarea": "text",
    "currency": "number",
    "double": "number",
    "percent": "number",
    "int": "number",
    "long": "number",
    "date": "date",
    "datetime": "datetime",
    "boolean": "bool",
}
# History tables that do not follow `{Object}History` / `{Object}Id`.
_HISTORY_TABLES = {"opportunity": ("OpportunityFieldHistory", "OpportunityId")}
_WHO_TYPES = {"lead", "contact"}
_ACTIVITY_TYPES = {"task": "Task", "note": "Note"}


class SalesforceCRMError(CRMError):
    """A `CRMError` that also keeps Salesforce's errorCode (e.g. FIELD_CUSTOM_VALIDATION_EXCEPTION)."""

    def __init__(
        self,
        kind: CRMErrorKind,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(kind, message, status=status)
        self.code = code


class _Transport(HTTPAdapter):
    """Adds a default timeout and, for a plain-HTTP instance (the stand-in), sends simple-salesforce's
    always-https URLs for that one host over http."""

    def __init__(self, plain_netloc: str | None, timeout: float, pool: int) -> None:
        super().__init__(pool_connections=4, pool_maxsize=pool)
        self._prefix = f"https://{plain_netloc}/" if plain_netloc else None
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        if self._prefix and request.url and request.url.startswith(self._prefix):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, **kwargs)


def _netloc(url: str) -> str:
    """The host[:port] simple-salesforce derives from an instance URL."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    return host if parsed.port in (None, 443) else f"{host}:{parsed.port}"


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _quote_ids(ids: Sequence[str]) -> str:
    # Only ever called with ids that matched _ID: alphanumerics cannot break out of the quotes.
    return ", ".join(f"'{i}'" for i in ids)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _pluck(record: Mapping[str, Any], path: str) -> Any:
    """A (possibly dotted) field from a SOQL record, matching names case-insensitively."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        if part in node:
            node = node[part]
        else:
            lower = part.lower()
            node = next((v for k, v in node.items() if k.lower() == lower), None)
    return node


def _chunks(items: Sequence[T], size: int = BATCH) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _history_table(sobject: str) -> tuple[str, str]:
    """(history object, its field naming the record) for an object's field history."""
    known = _HISTORY_TABLES.get(sobject.lower())
    if known is not None:
        return known
    if sobject.lower().endswith("__c"):
        return f"{sobject[:-3]}__History", "ParentId"
    return f"{sobject}History", f"{sobject}Id"


def _history_names(field: str) -> list[str]:
    """The names a field's changes are filed under in a history table, lowercased. A standard
    lookup (OwnerId, AccountId) is filed under its relationship name (Owner, Account)."""
    lower = field.lower()
    if lower.endswith("id") and len(lower) > 2 and "__" not in lower:
        return [lower, lower[:-2]]
    return [lower]


def _quote(text: str) -> str:
    """A SOQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _when(value: Any) -> datetime | None:
    """A Salesforce datetime (2026-01-05T09:30:00.000+0000) as an aware UTC datetime."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _one_per_change(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A lookup change is filed twice at the same moment: once with ids, once with names.
    Keep the id rows, as `read_records` returns ids for a lookup."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("CreatedDate"), row.get("CreatedById"), str(row.get("Field")).lower())
        groups.setdefault(key, []).append(row)
    kept: list[dict[str, Any]] = []
    for group in groups.values():
        ids = [
            r
            for r in group
            if all(v is None or _valid_id(v) for v in (r.get("OldValue"), r.get("NewValue")))
        ]
        kept.extend(ids if len(group) > 1 and 0 < len(ids) < len(group) else group)
    return kept


def _activity_record(
    sobject: str, record_id: str, activity: Activity
) -> tuple[str, dict[str, Any]]:
    """(Task|Note, the fields to create) for one activity on a record; CRMError if impossible."""
    if not _valid_id(record_id):
        raise CRMError(CRMErrorKind.NOT_FOUND, f"not a Salesforce record id: {record_id!r:.80}")
    target = _ACTIVITY_TYPES.get(activity.kind.lower())
    if target is None:
        raise CRMError(CRMErrorKind.VALIDATION, f"unknown activity kind {activity.kind!r}")
    first_line = next((ln.strip() for ln in activity.body.splitlines() if ln.strip()), "")
    payload: dict[str, Any]
    if target == "Task":
        payload = {
            "Subject": (activity.subject or first_line or "Task")[:255],
            "Description": activity.body,
            "Status": "Not Started",
            ("WhoId" if sobject.lower() in _WHO_TYPES else "WhatId"): record_id,
        }
        if activity.due:
            try:
                payload["ActivityDate"] = date.fromisoformat(activity.due[:10]).isoformat()
            except ValueError:
                raise CRMError(
                    CRMErrorKind.VALIDATION, f"bad due date {activity.due!r:.40}"
                ) from None
    else:
        # Note.Title holds at most 80 characters.
        payload = {
            "ParentId": record_id,
            "Title": (activity.subject or first_line or "Note")[:80],
            "Body": activity.body,
        }
    return target, payload


class SalesforceCRM:
    kind = "salesforce"

    def __init__(
        self,
        instance_url: str,
        access_token: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        security_token: str | None = None,
        domain: str | None = None,
        version: str = "59.0",
        max_workers: int = 8,
        integration_user_id: str | None = None,
    ) -> None:
        """`integration_user_id`: the user whose changes `read_history` reports as
        "integration". By default, the user this adapter is authenticated as, when Salesforce
        says (userinfo for a token, the username for a login); else no change is."""
        parsed = urlparse(instance_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("instance_url must be an http(s) URL")
        if access_token is None and not (username and password):
            raise ValueError("give an access token, or a username and password")
        self.instance_url = instance_url.rstrip("/")
        self.version = version
        self._token = access_token
        self._login = (username, password, security_token, domain)
        self._secrets = [s for s in (access_token, password, security_token) if s]
        self._session = requests.Session()
        plain = None
        if parsed.scheme == "http":
            plain = _netloc(instance_url)
            # Env proxies and REQUESTS_CA_BUNDLE have no business with a local plain-HTTP server.
            self._session.trust_env = False
        transport = _Transport(plain, TIMEOUT, max_workers)
        self._session.mount("https://", transport)
        self._session.mount("http://", transport)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="salesforce")
        self._sf: Salesforce | None = None
        self._sf_lock = threading.Lock()
        if integration_user_id is not None and not _valid_id(integration_user_id):
            raise ValueError("integration_user_id must be a Salesforce user id")
        self._integration_user = integration_user_id
        self._integration_known = integration_user_id is not None

    # --- plumbing ----------------------------------------------------------------------------
    def _client(self) -> Salesforce:
        with self._sf_lock:
            if self._sf is None:
                common: dict[str, Any] = {
                    "version": self.version,
                    "session": self._session,
                    "object_pairs_hook": dict,
                }
                if self._token is not None:
                    self._sf = Salesforce(
                        instance_url=self.instance_url, session_id=self._token, **common
                    )
                else:
                    username, password, security_token, domain = self._login
                    # A username/password login returns its own instance URL; ours only serves
                    # as the plain-HTTP rewrite target.
                    self._sf = Salesforce(
                        username=username,
                        password=password,
                        security_token=security_token or "",
                        domain=domain,
                        **common,
                    )
            return self._sf

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text[:2000]

    def _error(self, exc: Exception) -> SalesforceCRMError:
        """A simple-salesforce or requests failure, in the engine's terms."""
        if isinstance(exc, SalesforceAuthenticationFailed):
            return SalesforceCRMError(CRMErrorKind.UNAUTHORIZED, self._scrub(str(exc)), status=401)
        if isinstance(exc, SalesforceError):
            code, message = self._content(exc.content)
            status = exc.status
            if status == 401:
                kind = CRMErrorKind.UNAUTHORIZED
            elif status == 403:
                limited = code == "REQUEST_LIMIT_EXCEEDED"
                kind = CRMErrorKind.RATE_LIMITED if limited else CRMErrorKind.UNAUTHORIZED
            elif status == 404:
                kind = CRMErrorKind.NOT_FOUND
            elif status == 429:
                kind = CRMErrorKind.RATE_LIMITED
            elif status >= 500:
                kind = CRMErrorKind.TRANSIENT
            else:  # 400, 412 (precondition), 300, ...
                kind = CRMErrorKind.VALIDATION
            text = message or f"HTTP {status}"
            return SalesforceCRMError(kind, self._scrub(text), code=code, status=status)
        if isinstance(exc, requests.RequestException | ValueError):
            # Connection refused, timeout, or an unreadable body: a write's outcome is unknown.
            return SalesforceCRMError(
                CRMErrorKind.TRANSIENT, self._scrub(f"{type(exc).__name__}: {exc}")
            )
        raise exc

    @staticmethod
    def _content(content: Any) -> tuple[str | None, str]:
        """(errorCode, message) from a Salesforce error body: usually [{message, errorCode}]."""
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        items = content if isinstance(content, list) else [content]
        codes: list[str] = []
        parts: list[str] = []
        for item in items:
            if isinstance(item, Mapping):
                code = item.get("errorCode") or item.get("statusCode") or item.get("error")
                message = item.get("message") or item.get("error_description") or ""
                if code:
                    codes.append(str(code))
                parts.append(f"{code}: {message}" if code else str(message))
            elif item not in (None, ""):
                parts.append(str(item)[:500])
        return (codes[0] if codes else None), "; ".join(parts)

    def _save_error(self, errors: Sequence[Mapping[str, Any]]) -> SalesforceCRMError:
        """One failed record of a collection update."""
        code, message = self._content(list(errors))
        fields = [f for e in errors for f in (e.get("fields") or [])]
        kind = CRMErrorKind.VALIDATION
        if code in _NOT_FOUND_CODES and not fields:
            kind = CRMErrorKind.NOT_FOUND
        return SalesforceCRMError(kind, self._scrub(message or "update failed"), code=code)

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except CRMError:
            raise
        except Exception as exc:  # _error re-raises what it does not know
            raise self._error(exc) from exc

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._guarded, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def _restful(self, path: str, **kwargs: Any) -> Any:
        return self._client().restful(path, **kwargs)

    def _query_all(self, soql: str) -> list[dict[str, Any]]:
        return list(self._client().query_all(soql)["records"])

    def _query(self, soql: str) -> Any:
        return self._client().query(soql)

    def _whoami(self) -> str | None:
        """The id of the user this adapter acts as, when Salesforce will say."""
        username = self._login[0]
        if self._token is None and username:
            rows = self._query_all(f"SELECT Id FROM User WHERE Username = {_quote(username)}")
            return str(rows[0]["Id"]) if rows else None
        info = self._client().oauth2("userinfo")
        user = info.get("user_id") if isinstance(info, Mapping) else None
        return str(user) if _valid_id(user) else None

    async def _integration_user_id(self) -> str | None:
        if not self._integration_known:
            try:
                user = await self._run(self._whoami)
            except CRMError as err:
                if err.retryable:
                    raise
                user = None  # e.g. a session without the identity scope: unknown, for good
            self._integration_user, self._integration_known = user, True
        return self._integration_user

    @staticmethod
    def _type(object_type: str) -> str:
        if not isinstance(object_type, str) or not _NAME.fullmatch(object_type):
            raise CRMError(
                CRMErrorKind.VALIDATION, f"not a Salesforce object name: {object_type!r:.80}"
            )
        return object_type

    @staticmethod
    def _fields(fields: Sequence[str]) -> list[str]:
        """Field paths for a SELECT, deduplicated (SOQL refuses duplicates), Id excluded."""
        out: dict[str, str] = {}
        for name in fields:
            if not isinstance(name, str) or not _PATH.fullmatch(name):
                raise CRMError(
                    CRMErrorKind.VALIDATION, f"not a Salesforce field name: {name!r:.80}"
                )
            if name.lower() != "id":
                out.setdefault(name.lower(), name)
        return list(out.values())

    # --- the CRM port ------------------------------------------------------------------------
    async def read_records(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        sobject = self._type(object_type)
        select = ", ".join(["Id", *self._fields(fields)])
        wanted: dict[str, list[str]] = {}  # 15-char id -> ids as the caller spelled them
        for rid in record_ids:
            if _valid_id(rid) and rid not in wanted.get(rid[:15], []):
                wanted.setdefault(rid[:15], []).append(rid)
        ids = [spellings[0] for spellings in wanted.values()]
        soqls = [
            f"SELECT {select} FROM {sobject} WHERE Id IN ({_quote_ids(c)})" for c in _chunks(ids)
        ]
        pages = await asyncio.gather(*(self._run(self._query_all, q) for q in soqls))
        out: dict[str, RecordState] = {}
        for record in (r for page in pages for r in page):
            values = {name: _pluck(record, name) for name in fields}
            for rid in wanted.get(str(record.get("Id", ""))[:15], []):
                out[rid] = RecordState(rid, dict(values))
        return out

    async def update_records(
        self, object_type: str, updates: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        sobject = self._type(object_type)
        out: dict[str, CRMError | None] = {}
        items: list[tuple[str, dict[str, Any]]] = []
        for rid, values in updates.items():
            bad = [k for k in values if not _NAME.fullmatch(k) or k.lower() in ("id", "attributes")]
            if not _valid_id(rid):
                out[rid] = CRMError(
                    CRMErrorKind.NOT_FOUND, f"not a Salesforce record id: {rid!r:.80}"
                )
            elif bad:
                out[rid] = CRMError(
                    CRMErrorKind.VALIDATION, f"not writable field names: {bad!r:.200}"
                )
            else:
                items.append((rid, {k: _jsonable(v) for k, v in values.items()}))
        for n, chunk in enumerate(chunks := _chunks(items)):
            try:
                results = await self._run(self._update_chunk, sobject, chunk)
            except CRMError as err:
                if err.kind is CRMErrorKind.VALIDATION:
                    # The request as a whole was refused (e.g. an unknown field): nothing written.
                    out.update({rid: err for rid, _ in chunk})
                    continue
                if n == 0:
                    raise
                # Earlier chunks landed: report this and the unsent ones instead of raising.
                out.update({rid: err for later in chunks[n:] for rid, _ in later})
                break
            out.update(zip((rid for rid, _ in chunk), results, strict=True))
        return out

    def _update_chunk(
        self, sobject: str, chunk: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[CRMError | None]:
        records = [{"attributes": {"type": sobject}, "id": rid, **values} for rid, values in chunk]
        results = self._restful(
            "composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records}
        )
        if not isinstance(results, list) or len(results) != len(chunk):
            raise CRMError(CRMErrorKind.TRANSIENT, "unexpected sObject Collections response")
        # Results come back in request order; failed ones may carry no id.
        return [
            None if r.get("success") else self._save_error(r.get("errors") or []) for r in results
        ]

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        """Users by id, one SOQL query per 200. A record owned by a queue (a Group id) finds no
        User: that owner comes back without an email, and its review goes to the fallback."""
        unique = list(dict.fromkeys(str(o) for o in owner_ids if o))
        valid = [o for o in unique if _valid_id(o)]
        soqls = [
            f"SELECT Id, Email, Name FROM User WHERE Id IN ({_quote_ids(c)})" for c in _chunks(valid)
        ]
        pages = await asyncio.gather(*(self._run(self._query_all, q) for q in soqls))
        users = {str(u["Id"])[:15]: u for page in pages for u in page}
        out: dict[str, Owner] = {}
        for owner_id in unique:
            user = users.get(owner_id[:15])
            out[owner_id] = (
                Owner(id=owner_id, email=user.get("Email"), name=user.get("Name"))
                if user
                else Owner(id=owner_id, email=None)
            )
        return out

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        sobject = self._type(object_type)
        target, payload = _activity_record(sobject, record_id, activity)
        try:
            result = await self._run(
                self._restful, f"sobjects/{target}", method="POST", json=payload
            )
        except SalesforceCRMError as err:
            if err.code in _NOT_FOUND_CODES:
                raise SalesforceCRMError(
                    CRMErrorKind.NOT_FOUND, err.message, code=err.code, status=err.status
                ) from err
            raise
        if not isinstance(result, Mapping) or not result.get("success") or not result.get("id"):
            raise self._save_error(
                (result or {}).get("errors") or [{"message": f"{target} not created"}]
            )
        return str(result["id"])

    async def create_activities(
        self, object_type: str, items: Sequence[tuple[str, Activity]]
    ) -> list[str | CRMError]:
        """sObject Collections creates (`POST composite/sobjects`, `allOrNone: false`), Tasks and
        Notes mixed, 200 records a request; Salesforce answers record by record, in order.
        Chunks go one after another, with update_records' rules for a chunk that fails whole."""
        sobject = self._type(object_type)
        out: list[str | CRMError | None] = [None] * len(items)
        ready: list[tuple[int, dict[str, Any]]] = []
        for index, (record_id, activity) in enumerate(items):
            try:
                target, payload = _activity_record(sobject, record_id, activity)
            except CRMError as err:
                out[index] = err  # refused before any request
                continue
            ready.append((index, {"attributes": {"type": target}, **payload}))
        for n, chunk in enumerate(chunks := _chunks(ready)):
            try:
                results = await self._run(self._create_chunk, [r for _, r in chunk])
            except CRMError as err:
                if err.kind is CRMErrorKind.VALIDATION:
                    # The request as a whole was refused: nothing of it was created.
                    for index, _ in chunk:
                        out[index] = err
                    continue
                if n == 0:
                    raise
                # Earlier chunks landed: report this and the unsent ones instead of raising.
                for later in chunks[n:]:
                    for index, _ in later:
                        out[index] = err
                break
            for (index, _), result in zip(chunk, results, strict=True):
                out[index] = result
        return [o if o is not None else CRMError(CRMErrorKind.TRANSIENT, "not sent") for o in out]

    def _create_chunk(self, records: list[dict[str, Any]]) -> list[str | CRMError]:
        results = self._restful(
            "composite/sobjects", method="POST", json={"allOrNone": False, "records": records}
        )
        if not isinstance(results, list) or len(results) != len(records):
            raise CRMError(CRMErrorKind.TRANSIENT, "unexpected sObject Collections response")
        out: list[str | CRMError] = []
        for result in results:
            if isinstance(result, Mapping) and result.get("success") and result.get("id"):
                out.append(str(result["id"]))
                continue
            errors = (result.get("errors") if isinstance(result, Mapping) else None) or [
                {"message": "not created"}
            ]
            err = self._save_error(errors)
            if err.code in _NOT_FOUND_CODES:
                # As create_activity: the record the activity hangs on does not exist.
                err = SalesforceCRMError(CRMErrorKind.NOT_FOUND, err.message, code=err.code)
            out.append(err)
        return out

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        target = _ACTIVITY_TYPES.get(kind.lower())
        if target is None:
            raise CRMError(CRMErrorKind.VALIDATION, f"unknown activity kind {kind!r}")
        if not _valid_id(activity_id):
            raise CRMError(
                CRMErrorKind.NOT_FOUND, f"not a Salesforce record id: {activity_id!r:.80}"
            )
        await self._run(self._restful, f"sobjects/{target}/{activity_id}", method="DELETE")

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        sobject = self._type(object_type)
        described = await self._run(self._restful, f"sobjects/{sobject}/describe")
        schema: dict[str, FieldSchema] = {}
        for f in (described or {}).get("fields", []):
            type_ = _TYPES.get(f.get("type", ""), "string")
            options = (
                tuple(
                    FieldOption(value=str(p["value"]), label=str(p.get("label") or p["value"]))
                    for p in f.get("picklistValues") or []
                    if p.get("active", True)
                )
                if type_ == "enumeration"
                else ()
            )
            schema[f["name"]] = FieldSchema(
                name=f["name"],
                label=f.get("label") or f["name"],
                type=type_,
                writable=bool(f.get("updateable")),
                options=options,
            )
        return schema

    async def read_history(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, dict[str, list[FieldChange]]]:
        """Field history from the object's history table: `OpportunityFieldHistory`
        (`OpportunityId`), `{Object}History` (`{Object}Id`: Lead, Contact, Account, ...) or
        `{Custom}__History` (`ParentId`), 200 records a query.

        Salesforce records history only for fields with history tracking turned on (at most 20
        an object) and keeps it 18 to 24 months: a field that is not tracked simply has no rows
        and gets an empty list, as does every field of an object without a history table, and
        relationship paths (Owner.Email). Callers fall back to current values. A standard
        lookup's changes are filed under its relationship name (OwnerId under Owner) and twice
        (ids and names): the ids are returned. `source` is "integration" when the change was
        made by the integration user (see `__init__`), else "human": Salesforce attributes every
        change to a user. `by` is that user's id; `value` is the NewValue.
        """
        sobject = self._type(object_type)
        names = list(dict.fromkeys(fields))
        self._fields(names)  # refuses anything that is not a field name or path
        filed: dict[str, list[str]] = {}  # lowercased history Field -> fields asked for
        for name in names:
            if _NAME.fullmatch(name):
                for alias in _history_names(name):
                    filed.setdefault(alias, []).append(name)
        existing, integration = await asyncio.gather(
            self.read_records(sobject, record_ids, []), self._integration_user_id()
        )
        out: dict[str, dict[str, list[FieldChange]]] = {
            rid: {name: [] for name in names} for rid in existing
        }
        spellings: dict[str, list[str]] = {}  # 15-char id -> ids as the caller spelled them
        for rid in existing:
            spellings.setdefault(rid[:15], []).append(rid)
        if not filed or not spellings:
            return out
        table, parent = _history_table(sobject)
        wanted = ", ".join(_quote(f) for f in filed)
        soqls = [
            f"SELECT Id, {parent}, Field, OldValue, NewValue, CreatedDate, CreatedById "
            f"FROM {table} WHERE {parent} IN ({_quote_ids(chunk)}) AND Field IN ({wanted}) "
            "ORDER BY CreatedDate DESC"
            for chunk in _chunks([ids[0] for ids in spellings.values()])
        ]
        try:
            pages = await asyncio.gather(*(self._run(self._query_all, q) for q in soqls))
        except SalesforceCRMError as err:
            if err.code != "INVALID_TYPE":
                raise
            return out  # no history table: history tracking is off for the whole object
        dated = [
            (at, row)
            for row in _one_per_change([row for page in pages for row in page])
            if (at := _when(row.get("CreatedDate"))) is not None
        ]
        # Newest first; Salesforce ids grow with time, so the id breaks ties within a moment.
        dated.sort(key=lambda d: (d[0], str(d[1].get("Id") or "")), reverse=True)
        for at, row in dated:
            record = str(_pluck(row, parent) or "")[:15]
            if record not in spellings:
                continue
            by = row.get("CreatedById")
            if by is None:
                source = "unknown"
            elif integration is not None and str(by)[:15] == integration[:15]:
                source = "integration"
            else:
                source = "human"
            change = FieldChange(
                value=row.get("NewValue"), at=at, source=source, by=str(by) if by else None
            )
            for name in filed.get(str(row.get("Field") or "").lower(), []):
                for rid in spellings[record]:
                    out[rid][name].append(change)
        return out

    async def count_records(self, object_type: str) -> int:
        """`SELECT COUNT() FROM {object}`: Salesforce answers the count as `totalSize`."""
        sobject = self._type(object_type)
        result = await self._run(self._query, f"SELECT COUNT() FROM {sobject}")
        try:
            return int(result["totalSize"])
        except (TypeError, KeyError, ValueError):
            raise CRMError(CRMErrorKind.TRANSIENT, "unexpected COUNT() response") from None

    def record_url(self, object_type: str, record_id: str) -> str:
        return f"{self.instance_url}/lightning/r/{object_type}/{record_id}/view"

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()
