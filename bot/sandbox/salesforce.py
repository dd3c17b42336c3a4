"""A stateful stand-in for the Salesforce REST API, reached over HTTP by the real simple-salesforce.

It serves sObject rows (GET/PATCH/DELETE), sObject create (POST; Task and Note), describe, SOQL
queries (a small parser: SELECT fields and relationship paths or COUNT(), FROM, WHERE with = != < >
IN NOT IN LIKE AND OR NOT, ORDER BY, LIMIT), sObject Collections updates (PATCH
composite/sobjects) and the OpenID userinfo of the token's user, in Salesforce's wire shapes, and
refuses what Salesforce refuses: unknown fields, read-only fields, values that do not deserialize,
restricted picklist values, required fields set to null, custom validation rules, more than 200
records per collection, stale `If-Unmodified-Since`.

Every write bumps LastModifiedDate/SystemModstamp and appends field history for tracked fields,
queryable as OpportunityFieldHistory / LeadHistory / ContactHistory / AccountHistory; a tracked
lookup is filed as Salesforce files it, under its relationship name (OwnerId as Owner) and twice:
ids (DataType EntityId) and names (DataType Text).

Test helpers (no HTTP): `ids`, `record`, `value`, `create`, `delete`, `human_edit`, `activities`,
`history`, `add_validation_rule`, `clear_validation_rules`, `rename_field`, `set_updateable`,
`track_field`; `queries` lists every SOQL text received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp import web

from bot.sandbox import seed
from bot.sandbox.base import StandIn

API = r"/services/data/v{version:\d+\.\d+}"
ORG_ID = "00D000000000001AAA"
MAX_COLLECTION = 200
STRINGY = {"string", "textarea", "picklist", "email", "url", "phone", "combobox", "id", "reference"}
NUMERIC = {"currency", "double", "percent", "int"}
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SF_DT = "%Y-%m-%dT%H:%M:%S.%f%z"


# --- ids and timestamps ----------------------------------------------------------------------
def to18(id15: str) -> str:
    """Salesforce's case-safe 18-character form of a 15-character id."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, c in enumerate(id15[start : start + 5]) if "A" <= c <= "Z")
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def normalize_id(value: object) -> str | None:
    """The canonical 18-character id for a 15- or 18-character id, or None when it is no id."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        return None
    if len(value) == 15:
        return to18(value)
    # An 18-character id is case-insensitive: the suffix restores the case of the first 15.
    chars = list(value[:15])
    for chunk, sym in enumerate(value[15:].upper()):
        if sym not in _CHECKSUM:
            return None
        bits = _CHECKSUM.index(sym)
        for j in range(5):
            c = chars[chunk * 5 + j]
            chars[chunk * 5 + j] = c.upper() if bits >> j & 1 else c.lower()
    return to18("".join(chars))


def format_dt(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_dt(text: str) -> datetime:
    return datetime.strptime(text, _SF_DT)


# --- schema ----------------------------------------------------------------------------------
@dataclass
class SField:
    name: str
    label: str
    type: str = "string"
    length: int = 0
    updateable: bool = True
    createable: bool = True
    nillable: bool = True
    picklist: tuple[str, ...] = ()
    restricted: bool = True
    default: Any = None
    reference_to: tuple[str, ...] = ()
    relationship: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "length": self.length,
            "updateable": self.updateable,
            "createable": self.createable,
            "nillable": self.nillable,
            "custom": self.name.endswith("__c"),
            "calculated": False,
            "defaultValue": self.default,
            "picklistValues": [
                {
                    "active": True,
                    "defaultValue": v == self.default,
                    "label": v,
                    "validFor": None,
                    "value": v,
                }
                for v in self.picklist
            ],
            "restrictedPicklist": bool(self.picklist) and self.restricted,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship,
        }


@dataclass
class SObject:
    name: str
    label: str
    plural: str
    prefix: str
    fields: dict[str, SField]
    writable: bool = True
    history: tuple[str, str] | None = None  # (history object, its parent-id field)

    def field(self, name: str) -> SField | None:
        found = self.fields.get(name)
        if found is None:
            lower = name.lower()
            found = next((f for k, f in self.fields.items() if k.lower() == lower), None)
        return found

    def relationship(self, name: str) -> SField | None:
        lower = name.lower()
        return next(
            (f for f in self.fields.values() if f.relationship and f.relationship.lower() == lower),
            None,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.plural,
            "keyPrefix": self.prefix,
            "custom": False,
            "createable": self.writable,
            "updateable": self.writable,
            "deletable": self.writable,
            "queryable": True,
            "fields": [f.describe() for f in self.fields.values()],
        }


def _f(name: str, label: str, type_: str = "string", length: int = 0, **kw: Any) -> SField:
    return SField(name, label, type_, length, **kw)


def _ref(name: str, label: str, to: tuple[str, ...], rel: str, **kw: Any) -> SField:
    return SField(name, label, "reference", 18, reference_to=to, relationship=rel, **kw)


def _system() -> list[SField]:
    ro = {"updateable": False, "createable": False}
    return [
        _f("Id", "Record ID", "id", 18, nillable=False, **ro),
        _f("IsDeleted", "Deleted", "boolean", nillable=False, default=False, **ro),
        _f("CreatedDate", "Created Date", "datetime", nillable=False, **ro),
        _ref("CreatedById", "Created By ID", ("User",), "CreatedBy", nillable=False, **ro),
        _f("LastModifiedDate", "Last Modified Date", "datetime", nillable=False, **ro),
        _ref(
            "LastModifiedById",
            "Last Modified By ID",
            ("User",),
            "LastModifiedBy",
            nillable=False,
            **ro,
        ),
        _f("SystemModstamp", "System Modstamp", "datetime", nillable=False, **ro),
    ]


def _owner() -> SField:
    return _ref("OwnerId", "Owner ID", ("User",), "Owner", nillable=False)


STAGES: dict[str, int] = {
    "Prospecting": 10,
    "Qualification": 10,
    "Needs Analysis": 20,
    "Value Proposition": 50,
    "Id. Decision Makers": 60,
    "Perception Analysis": 70,
    "Proposal/Price Quote": 75,
    "Negotiation/Review": 90,
    "Closed Won": 100,
    "Closed Lost": 0,
}
FORECAST = ("Omitted", "Pipeline", "BestCase", "Commit", "Closed")
INDUSTRIES = (
    "Banking",
    "Biotechnology",
    "Consulting",
    "Education",
    "Energy",
    "Finance",
    "Healthcare",
    "Manufacturing",
    "Media",
    "Retail",
    "Technology",
    "Other",
)
LEAD_STATUS = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
TASK_STATUS = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
RECORD_TYPES = ("Opportunity", "Account", "Lead", "Contact")


def _history_object(parent: str, prefix: str) -> SObject:
    name = "OpportunityFieldHistory" if parent == "Opportunity" else f"{parent}History"
    fields = [
        _f("Id", "History ID", "id", 18, nillable=False, updateable=False, createable=False),
        _f("IsDeleted", "Deleted", "boolean", nillable=False, updateable=False),
        _ref(f"{parent}Id", f"{parent} ID", (parent,), parent, nillable=False, updateable=False),
        _f("Field", "Changed Field", "picklist", 255, updateable=False, restricted=False),
        _f("DataType", "Data Type", "string", 255, updateable=False),
        _f("OldValue", "Old Value", "anyType", updateable=False),
        _f("NewValue", "New Value", "anyType", updateable=False),
        _ref("CreatedById", "Created By ID", ("User",), "CreatedBy", updateable=False),
        _f("CreatedDate", "Created Date", "datetime", updateable=False),
    ]
    return SObject(
        name,
        f"{parent} History",
        f"{parent} History",
        prefix,
        {f.name: f for f in fields},
        writable=False,
    )


def build_schema() -> dict[str, SObject]:
    def obj(name: str, plural: str, prefix: str, fields: list[SField], **kw: Any) -> SObject:
        return SObject(name, name, plural, prefix, {f.name: f for f in [*_system(), *fields]}, **kw)

    objects = [
        obj(
            "User",
            "Users",
            "005",
            [
                _f("Name", "Full Name", "string", 121, updateable=False, createable=False),
                _f("FirstName", "First Name", "string", 40),
                _f("LastName", "Last Name", "string", 80, nillable=False),
                _f("Email", "Email", "email", 128, nillable=False),
                _f("Username", "Username", "string", 80, nillable=False),
                _f("IsActive", "Active", "boolean", nillable=False, default=True),
            ],
        ),
        obj(
            "Account",
            "Accounts",
            "001",
            [
                _f("Name", "Account Name", "string", 255, nillable=False),
                _f("Industry", "Industry", "picklist", 255, picklist=INDUSTRIES, restricted=False),
                _f("Website", "Website", "url", 255),
                _f("Description", "Account Description", "textarea", 32000),
                _owner(),
            ],
            history=("AccountHistory", "AccountId"),
        ),
        obj(
            "Opportunity",
            "Opportunities",
            "006",
            [
                _f("Name", "Name", "string", 120, nillable=False),
                _ref("AccountId", "Account ID", ("Account",), "Account"),
                _f("StageName", "Stage", "picklist", 255, nillable=False, picklist=tuple(STAGES)),
                _f("Amount", "Amount", "currency"),
                _f("CloseDate", "Close Date", "date", nillable=False),
                _f("Description", "Description", "textarea", 32000),
                _f("NextStep", "Next Step", "string", 255),
                _f(
                    "ForecastCategoryName",
                    "Forecast Category",
                    "picklist",
                    40,
                    nillable=False,
                    picklist=FORECAST,
                    default="Pipeline",
                ),
                _f("Probability", "Probability (%)", "percent", updateable=False, createable=False),
                _f("TotalOpportunityQuantity", "Quantity", "double"),
                _f("IsPrivate", "Private", "boolean", nillable=False, default=False),
                _owner(),
            ],
            history=("OpportunityFieldHistory", "OpportunityId"),
        ),
        obj(
            "Lead",
            "Leads",
            "00Q",
            [
                _f("FirstName", "First Name", "string", 40),
                _f("LastName", "Last Name", "string", 80, nillable=False),
                _f("Company", "Company", "string", 255, nillable=False),
                _f("Title", "Title", "string", 128),
                _f("Email", "Email", "email", 80),
                _f("Industry", "Industry", "picklist", 255, picklist=INDUSTRIES, restricted=False),
                _f("Rating", "Rating", "picklist", 255, picklist=("Hot", "Warm", "Cold")),
                _f(
                    "Status",
                    "Status",
                    "picklist",
                    255,
                    nillable=False,
                    picklist=LEAD_STATUS,
                    default="Open - Not Contacted",
                ),
                _f("Description", "Description", "textarea", 32000),
                _owner(),
            ],
            history=("LeadHistory", "LeadId"),
        ),
        obj(
            "Contact",
            "Contacts",
            "003",
            [
                _f("FirstName", "First Name", "string", 40),
                _f("LastName", "Last Name", "string", 80, nillable=False),
                _ref("AccountId", "Account ID", ("Account",), "Account"),
                _f("Email", "Email", "email", 80),
                _f("Title", "Title", "string", 128),
                _f("Department", "Department", "string", 80),
                _f("Description", "Contact Description", "textarea", 32000),
                _owner(),
            ],
            history=("ContactHistory", "ContactId"),
        ),
        obj(
            "Task",
            "Tasks",
            "00T",
            [
                _f("Subject", "Subject", "combobox", 255),
                _f("Description", "Comments", "textarea", 32000),
                _f("ActivityDate", "Due Date Only", "date"),
                _f(
                    "Status",
                    "Status",
                    "picklist",
                    255,
                    nillable=False,
                    picklist=TASK_STATUS,
                    default="Not Started",
                ),
                _f(
                    "Priority",
                    "Priority",
                    "picklist",
                    40,
                    nillable=False,
                    picklist=("High", "Normal", "Low"),
                    default="Normal",
                ),
                _ref("WhatId", "Related To ID", ("Opportunity", "Account"), "What"),
                _ref("WhoId", "Name ID", ("Lead", "Contact"), "Who"),
                _owner(),
            ],
        ),
        obj(
            "Note",
            "Notes",
            "002",
            [
                _ref(
                    "ParentId",
                    "Parent ID",
                    RECORD_TYPES,
                    "Parent",
                    nillable=False,
                    updateable=False,
                ),
                _f("Title", "Title", "string", 80, nillable=False),
                _f("Body", "Body", "textarea", 32000),
                _f("IsPrivate", "Private", "boolean", nillable=False, default=False),
                _owner(),
            ],
        ),
        _history_object("Opportunity", "008"),
        _history_object("Lead", "017"),
        _history_object("Contact", "017"),
        _history_object("Account", "017"),
    ]
    return {o.name: o for o in objects}


# --- errors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFError:
    code: str
    message: str
    fields: tuple[str, ...] = ()

    def rest(self) -> dict[str, Any]:
        return {"message": self.message, "errorCode": self.code, "fields": list(self.fields)}

    def save(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": list(self.fields)}


class Refused(Exception):
    """The request as a whole is refused: answered with `status` and a list of errors."""

    def __init__(self, status: int, *errors: SFError) -> None:
        super().__init__(errors[0].message if errors else str(status))
        self.status = status
        self.errors = errors

    def response(self) -> web.Response:
        return web.json_response([e.rest() for e in self.errors], status=self.status)


def _refuse(status: int, code: str, message: str, fields: Iterable[str] = ()) -> Refused:
    return Refused(status, SFError(code, message, tuple(fields)))


NOT_FOUND = SFError("NOT_FOUND", "The requested resource does not exist")
DELETED = SFError("ENTITY_IS_DELETED", "entity is deleted")
ROLLED_BACK = SFError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone "
    "header",
)


@dataclass
class ValidationRule:
    sobject: str
    predicate: Callable[[Mapping[str, Any]], bool]  # True means the record is in error
    message: str
    field: str | None = None


# --- SOQL ------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|=|<|>|\(|\)|,)|(?P<word>[\w.:+\-]+))"
)
_ESCAPES = {
    "'": "'",
    '"': '"',
    "\\": "\\",
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "_": "\\_",
    "%": "\\%",
}
Tok = tuple[str, str]  # (kind, text): kind is "str", "op", "word" or "end"


def _tokenize(text: str) -> list[Tok]:
    tokens: list[Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{text[pos:].split()[0]}'")
        kind = m.lastgroup or "word"
        raw = m.group(kind)
        if kind == "str":
            out, i, body = [], 0, raw[1:-1]
            while i < len(body):
                if body[i] == "\\":
                    esc = _ESCAPES.get(body[i + 1])
                    if esc is None:
                        raise _refuse(
                            400,
                            "MALFORMED_QUERY",
                            f"Invalid string literal '{raw}'. "
                            "Illegal character sequence '\\" + body[i + 1] + "'",
                        )
                    out.append(esc)
                    i += 2
                else:
                    out.append(body[i])
                    i += 1
            raw = "".join(out)
        tokens.append((kind, raw))
        pos = m.end()
    tokens.append(("end", ""))
    return tokens


@dataclass
class Cond:
    path: tuple[str, ...]
    op: str  # = != < <= > >= IN NOT IN LIKE
    values: list[Tok]


Expr = Any  # Cond | ("and"|"or", [Expr, ...]) | ("not", Expr)


@dataclass
class Query:
    select: list[tuple[str, ...]]
    sobject: str
    where: Expr | None = None
    order: tuple[tuple[str, ...], bool] | None = None  # (path, descending)
    limit: int | None = None
    count: bool = False  # SELECT COUNT(): only totalSize is answered


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, word: str | None = None) -> bool:
        kind, text = self.toks[self.i]
        return word is None or (kind in ("word", "op") and text.upper() == word)

    def take(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, word: str) -> None:
        kind, text = self.take()
        if kind not in ("word", "op") or text.upper() != word:
            got = text or "<EOF>"
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{got}'")

    def ident(self) -> tuple[str, ...]:
        kind, text = self.take()
        if kind != "word" or not re.fullmatch(r"[A-Za-z]\w*(\.[A-Za-z]\w*)*", text):
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{text or '<EOF>'}'")
        return tuple(text.split("."))

    def parse(self) -> Query:
        self.expect("SELECT")
        count = self.peek("COUNT") and self.toks[self.i + 1] == ("op", "(")
        select: list[tuple[str, ...]] = []
        if count:
            self.take()
            self.expect("(")
            self.expect(")")
        else:
            select.append(self.ident())
            while self.peek(","):
                self.take()
                select.append(self.ident())
        self.expect("FROM")
        query = Query(select, ".".join(self.ident()), count=count)
        if self.peek("WHERE"):
            self.take()
            query.where = self.expr()
        if self.peek("ORDER"):
            self.take()
            self.expect("BY")
            path = self.ident()
            desc = False
            if self.peek("ASC") or self.peek("DESC"):
                desc = self.take()[1].upper() == "DESC"
            query.order = (path, desc)
        if self.peek("LIMIT"):
            self.take()
            kind, text = self.take()
            if not text.isdigit():
                raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{text or '<EOF>'}'")
            query.limit = int(text)
        if self.toks[self.i][0] != "end":
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{self.toks[self.i][1]}'")
        return query

    def expr(self) -> Expr:
        terms = [self.term()]
        while self.peek("OR"):
            self.take()
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def term(self) -> Expr:
        factors = [self.factor()]
        while self.peek("AND"):
            self.take()
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else ("and", factors)

    def factor(self) -> Expr:
        if self.peek("NOT"):
            self.take()
            return ("not", self.factor())
        if self.peek("("):
            self.take()
            inner = self.expr()
            self.expect(")")
            return inner
        path = self.ident()
        kind, op = self.take()
        op = op.upper()
        if op == "NOT" and self.peek("IN"):
            self.take()
            op = "NOT IN"
        if op in ("IN", "NOT IN"):
            self.expect("(")
            values = [self.literal()]
            while self.peek(","):
                self.take()
                values.append(self.literal())
            self.expect(")")
            return Cond(path, op, values)
        if op not in ("=", "!=", "<", "<=", ">", ">=", "LIKE"):
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{op or '<EOF>'}'")
        return Cond(path, op, [self.literal()])

    def literal(self) -> Tok:
        tok = self.take()
        if tok[0] not in ("str", "word"):
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{tok[1] or '<EOF>'}'")
        return tok


# --- the stand-in ----------------------------------------------------------------------------
API_USER = ("005000000000900AAA", "integration@example.com", "Agent", "Integration")


class SalesforceStandIn(StandIn):
    name = "salesforce"

    def __init__(
        self, token: str | None = "sandbox-salesforce-token", *, seed: bool = True
    ) -> None:
        self.objects = build_schema()
        self.records: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in self.objects}
        self.rules: list[ValidationRule] = []
        self.tracked: dict[str, set[str]] = {
            "Opportunity": {"StageName", "Amount", "CloseDate", "NextStep"},
            "Lead": {"Status", "Rating"},
            "Contact": {"Title", "Email"},
            "Account": {"Industry"},
        }
        self.queries: list[str] = []
        self.api_used = 0
        self.api_limit = 15000
        self.api_user_id = API_USER[0]
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._seq: dict[str, int] = {}
        super().__init__(token=token)
        self._seed_users()
        if seed:
            self._seed_records()

    # --- wiring ------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get(API + "/sobjects/{sobject}/{id}", self._get)
        app.router.add_patch(API + "/sobjects/{sobject}/{id}", self._patch)
        app.router.add_delete(API + "/sobjects/{sobject}/{id}", self._delete)
        app.router.add_post(API + "/sobjects/{sobject}", self._post)
        app.router.add_post(API + "/sobjects/{sobject}/", self._post)
        for path in ("/query", "/query/"):
            app.router.add_get(API + path, self._query)
        for path in ("/composite/sobjects", "/composite/sobjects/"):
            app.router.add_patch(API + path, self._collection_update)
            app.router.add_post(API + path, self._collection_create)
        app.router.add_get("/services/oauth2/userinfo", self._userinfo)
        app.router.add_post("/services/oauth2/userinfo", self._userinfo)
        app.on_response_prepare.append(self._limit_info)

    async def _limit_info(self, request: web.Request, response: web.StreamResponse) -> None:
        # OAuth endpoints are not API calls: they do not count against the allocation.
        if request.path.startswith("/services/data/"):
            self.api_used += 1
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_limit}"

    def error_response(self, status: int, message: str, code: str) -> web.Response:
        return web.json_response([{"message": message, "errorCode": code}], status=status)

    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("Authorization", "")
        return header in (f"Bearer {self.token}", f"OAuth {self.token}")

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.error_response(401, "Session expired or invalid", "INVALID_SESSION_ID")

    def rate_limited_response(self, retry_after: float) -> web.Response:
        # Salesforce answers the exhausted allocation with 403 and no Retry-After.
        return self.error_response(403, "TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED")

    # --- seed --------------------------------------------------------------------------------
    def _seed_users(self) -> None:
        people = [(p.sf_user_id, p.email, p.first, p.last) for p in seed.OWNERS]
        for uid, email, first, last in [*people, API_USER]:
            self._store(
                "User",
                uid,
                {
                    "FirstName": first,
                    "LastName": last,
                    "Name": f"{first} {last}",
                    "Email": email,
                    "Username": email,
                    "IsActive": True,
                },
                created=datetime(2025, 1, 6, 9, 0, tzinfo=UTC),
            )

    def _seed_records(self) -> None:
        at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
        ava, ben, chloe = (p.sf_user_id for p in seed.OWNERS)
        acme = self._store(
            "Account",
            None,
            {
                "Name": "Acme Corp",
                "Industry": "Technology",
                "Website": "acme.example",
                "OwnerId": ava,
            },
            at,
        )
        globex = self._store(
            "Account",
            None,
            {"Name": "Globex", "Industry": None, "Website": "globex.example", "OwnerId": ben},
            at,
        )
        opportunities = [
            (
                "Acme Corp - Platform renewal",
                "Qualification",
                48000.0,
                "2026-12-19",
                "Renewal of the platform licence, 3 years.",
                "Send security questionnaire",
                "Pipeline",
                ava,
                acme,
            ),
            (
                "Globex - Analytics add-on",
                "Value Proposition",
                12500.0,
                "2027-01-15",
                None,
                "Demo with the data team",
                "BestCase",
                ben,
                globex,
            ),
            (
                "Initech - Expansion to EMEA",
                "Proposal/Price Quote",
                96000.0,
                "2026-12-31",
                "EMEA rollout, 400 seats.",
                "Legal review of MSA",
                "Commit",
                chloe,
                None,
            ),
            (
                "Umbrella - Pilot",
                "Prospecting",
                5000.0,
                "2027-02-28",
                None,
                None,
                "Pipeline",
                ava,
                None,
            ),
        ]
        for name, stage, amount, close, desc, step, forecast, owner, account in opportunities:
            self._store(
                "Opportunity",
                None,
                {
                    "Name": name,
                    "StageName": stage,
                    "Amount": amount,
                    "CloseDate": close,
                    "Description": desc,
                    "NextStep": step,
                    "ForecastCategoryName": forecast,
                    "Probability": float(STAGES[stage]),
                    "OwnerId": owner,
                    "AccountId": account,
                    "IsPrivate": False,
                    "TotalOpportunityQuantity": None,
                },
                at,
            )
        leads = [
            (
                "Peter",
                "Gibbons",
                "Initech",
                "Engineer",
                "Technology",
                "Warm",
                "Working - Contacted",
                chloe,
            ),
            (
                "Marge",
                "Gunderson",
                "Brainerd Police",
                "Chief",
                "Other",
                "Hot",
                "Open - Not Contacted",
                ben,
            ),
        ]
        for first, last, company, title, industry, rating, status, owner in leads:
            self._store(
                "Lead",
                None,
                {
                    "FirstName": first,
                    "LastName": last,
                    "Company": company,
                    "Title": title,
                    "Industry": industry,
                    "Rating": rating,
                    "Status": status,
                    "Description": None,
                    "OwnerId": owner,
                    "Email": None,
                },
                at,
            )
        contacts = [
            (
                "Wile",
                "Coyote",
                "wile@acme.example",
                "Head of Procurement",
                "Procurement",
                ava,
                acme,
            ),
            ("Hank", "Scorpio", "hank@globex.example", "CEO", "Executive", ben, globex),
        ]
        for first, last, email, title, dept, owner, account in contacts:
            self._store(
                "Contact",
                None,
                {
                    "FirstName": first,
                    "LastName": last,
                    "Email": email,
                    "Title": title,
                    "Department": dept,
                    "Description": None,
                    "OwnerId": owner,
                    "AccountId": account,
                },
                at,
            )

    # --- state primitives --------------------------------------------------------------------
    def _new_id(self, sobject: str) -> str:
        prefix = self.objects[sobject].prefix
        self._seq[prefix] = self._seq.get(prefix, 0) + 1
        return to18(f"{prefix}Hs{self._seq[prefix]:010d}")

    def _store(
        self,
        sobject: str,
        rid: str | None,
        values: Mapping[str, Any],
        created: datetime | None = None,
        user_id: str | None = None,
    ) -> str:
        obj = self.objects[sobject]
        rid = rid or self._new_id(sobject)
        stamp = format_dt(created or self.now())
        user = user_id or self.api_user_id
        rec: dict[str, Any] = {name: f.default for name, f in obj.fields.items()}
        rec.update(
            {
                "Id": rid,
                "IsDeleted": False,
                "CreatedDate": stamp,
                "CreatedById": user,
                "LastModifiedDate": stamp,
                "LastModifiedById": user,
                "SystemModstamp": stamp,
            }
        )
        if "OwnerId" in obj.fields:
            rec["OwnerId"] = user
        rec.update(values)
        if sobject == "Opportunity" and rec.get("StageName") in STAGES:
            rec["Probability"] = float(STAGES[rec["StageName"]])
        self.records[sobject][rid] = rec
        return rid

    def _name_of(self, rid: Any) -> Any:
        found = self._find(rid) if isinstance(rid, str) else None
        return found[1].get("Name") if found else rid

    def _type_of(self, rid: str) -> str | None:
        prefix = rid[:3]
        return next((n for n, o in self.objects.items() if o.prefix == prefix and o.writable), None)

    def _find(self, rid: str) -> tuple[str, dict[str, Any]] | None:
        for name, rows in self.records.items():
            if rid in rows:
                return name, rows[rid]
        return None

    def _lookup(self, sobject: str, raw_id: str) -> dict[str, Any]:
        """The live record, or Refused(404) in Salesforce's words."""
        rid = normalize_id(raw_id)
        rec = self.records.get(sobject, {}).get(rid) if rid else None
        if rec is None:
            raise Refused(404, NOT_FOUND)
        if rec["IsDeleted"]:
            raise Refused(404, DELETED)
        return rec

    def _apply(
        self,
        sobject: str,
        rec: dict[str, Any],
        changes: Mapping[str, Any],
        user_id: str | None = None,
    ) -> None:
        obj = self.objects[sobject]
        user = user_id or self.api_user_id
        # One save, one moment: every history row it files carries the same CreatedDate (a
        # lookup's two rows are told apart from two changes by it).
        moment = self.now()
        stamp = format_dt(moment)
        if sobject == "Opportunity" and changes.get("StageName") in STAGES:
            changes = {**changes, "Probability": float(STAGES[changes["StageName"]])}
        for name, new in changes.items():
            old = rec.get(name)
            rec[name] = new
            if obj.history and name in self.tracked.get(sobject, set()) and old != new:
                hist, parent_field = obj.history
                fld = obj.fields[name]
                if fld.type == "reference":
                    # Filed under the relationship name for a standard lookup, twice: ids, names.
                    filed = fld.name if fld.name.endswith("__c") else fld.relationship or name
                    entries = [
                        (filed, "EntityId", old, new),
                        (filed, "Text", self._name_of(old), self._name_of(new)),
                    ]
                else:
                    entries = [(name, fld.type, old, new)]
                for filed, data_type, old_value, new_value in entries:
                    self._store(
                        hist,
                        None,
                        {
                            parent_field: rec["Id"],
                            "Field": filed,
                            "DataType": data_type,
                            "OldValue": old_value,
                            "NewValue": new_value,
                        },
                        created=moment,
                        user_id=user,
                    )
        rec.update({"LastModifiedDate": stamp, "SystemModstamp": stamp, "LastModifiedById": user})

    # --- deserialization and save-time checks --------------------------------------------------
    def _deserialize(
        self, obj: SObject, body: Mapping[str, Any], raw: str, skip: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Field name -> typed value, or Refused(400) as Salesforce's JSON layer refuses."""
        skipped = {s.lower() for s in skip}
        out: dict[str, Any] = {}
        for key, value in body.items():
            if key.lower() in skipped:
                continue
            fld = obj.field(key)
            if fld is None:
                raise _refuse(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}"
                )
            out[fld.name] = self._coerce(fld, key, value, raw)
        return out

    @staticmethod
    def _coerce(fld: SField, key: str, value: Any, raw: str) -> Any:
        if value is None:
            return None
        if isinstance(value, dict | list):
            raise _refuse(
                400,
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                f"{fld.label}: value not of required type: {json.dumps(value)}",
                [fld.name],
            )

        def parser_error() -> Refused:
            token = (
                "VALUE_TRUE"
                if value is True
                else "VALUE_FALSE"
                if value is False
                else "VALUE_STRING"
                if isinstance(value, str)
                else "VALUE_NUMBER_INT"
                if isinstance(value, int)
                else "VALUE_NUMBER_FLOAT"
            )
            column = raw.find(f'"{key}"') + len(key) + 4
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of {fld.type} from {token} value {value} "
                f"or request may be missing a required field at [line:1, column:{column}]",
            )

        if fld.type in NUMERIC:
            if isinstance(value, bool):
                raise parser_error()
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise parser_error() from None
            if number != number or number in (float("inf"), float("-inf")):
                raise parser_error()
            return int(number) if fld.type == "int" else number
        if fld.type == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise parser_error()
        if fld.type == "date":
            if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
                raise parser_error()
            try:
                date.fromisoformat(value)
            except ValueError:
                raise parser_error() from None
            return value
        if fld.type == "datetime":
            try:
                moment = datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                moment = None
            if moment is None or "T" not in value:
                raise parser_error()
            return format_dt(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float) else value

    def _check(
        self, obj: SObject, rec: Mapping[str, Any] | None, changes: dict[str, Any], *, create: bool
    ) -> list[SFError]:
        """Save-time errors for one record; normalizes `changes` in place (ids, empty strings)."""
        locked = [
            n
            for n in changes
            if not (obj.fields[n].createable if create else obj.fields[n].updateable)
        ]
        if locked:
            return [
                SFError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                    "settings of this field and verify that it is read/write for your profile or "
                    "permission set.",
                    tuple(locked),
                )
            ]
        errors: list[SFError] = []
        missing: list[str] = []
        for name, value in list(changes.items()):
            fld = obj.fields[name]
            if fld.type in STRINGY and value == "":
                value = changes[name] = None
            if value is None and fld.type == "boolean":
                value = changes[name] = False  # a checkbox is never null
            if value is None:
                if not fld.nillable:
                    missing.append(name)
                continue
            if fld.type == "reference":
                error = self._check_reference(fld, value)
                if error:
                    errors.append(error)
                else:
                    changes[name] = normalize_id(value)
            elif fld.picklist and fld.restricted and value not in fld.picklist:
                errors.append(
                    SFError(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{fld.label}: bad value for restricted picklist field: {value}",
                        (name,),
                    )
                )
            elif fld.length and fld.type in STRINGY and len(value) > fld.length:
                errors.append(
                    SFError(
                        "STRING_TOO_LONG",
                        f"{fld.label}: data value too large: "
                        f"{value[:80]} (max length={fld.length})",
                        (name,),
                    )
                )
            elif fld.type == "email" and not _EMAIL_RE.fullmatch(value):
                errors.append(
                    SFError(
                        "INVALID_EMAIL_ADDRESS",
                        f"{fld.label}: invalid email address: {value}",
                        (name,),
                    )
                )
        if create:
            missing += [
                n
                for n, f in obj.fields.items()
                if f.createable
                and not f.nillable
                and f.default is None
                and n not in changes
                and n != "OwnerId"
            ]
        if missing:
            errors.append(
                SFError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    tuple(missing),
                )
            )
        if errors:
            return errors
        merged = {**(rec or {}), **changes}
        return [
            SFError(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                rule.message,
                (rule.field,) if rule.field else (),
            )
            for rule in self.rules
            if rule.sobject == obj.name and rule.predicate(merged)
        ]

    def _check_reference(self, fld: SField, value: str) -> SFError | None:
        rid = normalize_id(value)
        if rid is None:
            return SFError(
                "MALFORMED_ID", f"{fld.label}: id value of incorrect type: {value}", (fld.name,)
            )
        if self._type_of(rid) not in fld.reference_to:
            return SFError(
                "FIELD_INTEGRITY_EXCEPTION",
                f"{fld.label}: id value of incorrect type: {value}",
                (fld.name,),
            )
        found = self._find(rid)
        if found is None or found[1]["IsDeleted"]:
            return SFError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", (fld.name,))
        return None

    # --- handlers ----------------------------------------------------------------------------
    def _object(self, request: web.Request) -> SObject:
        obj = self.objects.get(request.match_info["sobject"])
        if obj is None:
            raise Refused(404, NOT_FOUND)
        return obj

    @staticmethod
    async def _json(request: web.Request) -> tuple[Any, str]:
        raw = await request.text()
        try:
            return json.loads(raw), raw
        except ValueError as exc:
            raise _refuse(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None

    def _row(
        self, sobject: str, rec: Mapping[str, Any], names: Iterable[str], version: str
    ) -> dict[str, Any]:
        url = f"/services/data/v{version}/sobjects/{sobject}/{rec['Id']}"
        return {"attributes": {"type": sobject, "url": url}, **{n: rec.get(n) for n in names}}

    async def _get(self, request: web.Request) -> web.Response:
        try:
            obj = self._object(request)
            rid = request.match_info["id"]
            if rid == "describe":
                return web.json_response(obj.describe())
            rec = self._lookup(obj.name, rid)
            names = list(obj.fields)
            if request.query.get("fields"):
                names = ["Id"]
                for part in request.query["fields"].split(","):
                    fld = obj.field(part.strip())
                    if fld is None:
                        raise _refuse(
                            400,
                            "INVALID_FIELD",
                            f"No such column '{part.strip()}' on entity '{obj.name}'. "
                            "If you are attempting to use a custom field, be sure to "
                            "append the '__c' after the custom field name. Please "
                            "reference your WSDL or the describe call for the "
                            "appropriate names.",
                        )
                    if fld.name not in names:
                        names.append(fld.name)
            since = request.headers.get("If-Modified-Since")
            if since and self._unchanged_since(rec, since):
                return web.Response(status=304)
            return web.json_response(self._row(obj.name, rec, names, request.match_info["version"]))
        except Refused as refused:
            return refused.response()

    def _unchanged_since(self, rec: Mapping[str, Any], header: str) -> bool:
        try:
            since = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            raise _refuse(400, "INVALID_HEADER_TYPE", f"Invalid date in header: {header}") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        # HTTP dates have whole seconds: compare at that resolution.
        modified = parse_dt(rec["LastModifiedDate"]).replace(microsecond=0)
        return modified <= since

    async def _patch(self, request: web.Request) -> web.Response:
        try:
            obj = self._object(request)
            if not obj.writable:
                raise _refuse(
                    400,
                    "INVALID_TYPE_FOR_OPERATION",
                    f"entity type {obj.name} does not support update",
                )
            rec = self._lookup(obj.name, request.match_info["id"])
            header = request.headers.get("If-Unmodified-Since")
            if header and not self._unchanged_since(rec, header):
                raise _refuse(
                    412,
                    "PRECONDITION_FAILED",
                    "The requested resource has been modified since the If-Unmodified-Since date",
                )
            body, raw = await self._json(request)
            if not isinstance(body, dict):
                raise _refuse(
                    400,
                    "JSON_PARSER_ERROR",
                    "Cannot deserialize instance of sObject from START_ARRAY value",
                )
            changes = self._deserialize(obj, body, raw, skip=("attributes",))
            errors = self._check(obj, rec, changes, create=False)
            if errors:
                raise Refused(400, *errors)
            self._apply(obj.name, rec, changes)
            return web.Response(status=204)
        except Refused as refused:
            return refused.response()

    async def _post(self, request: web.Request) -> web.Response:
        try:
            obj = self._object(request)
            if not obj.writable:
                raise _refuse(
                    400,
                    "INVALID_TYPE_FOR_OPERATION",
                    f"entity type {obj.name} does not support insert",
                )
            body, raw = await self._json(request)
            if not isinstance(body, dict):
                raise _refuse(
                    400,
                    "JSON_PARSER_ERROR",
                    "Cannot deserialize instance of sObject from START_ARRAY value",
                )
            values = self._deserialize(obj, body, raw, skip=("attributes",))
            errors = self._check(obj, None, values, create=True)
            if errors:
                raise Refused(400, *errors)
            rid = self._store(obj.name, None, values)
            return web.json_response({"id": rid, "success": True, "errors": []}, status=201)
        except Refused as refused:
            return refused.response()

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            obj = self._object(request)
            if not obj.writable:
                raise _refuse(
                    400,
                    "INVALID_TYPE_FOR_OPERATION",
                    f"entity type {obj.name} does not support delete",
                )
            rec = self._lookup(obj.name, request.match_info["id"])
            self._apply(obj.name, rec, {"IsDeleted": True})
            return web.Response(status=204)
        except Refused as refused:
            return refused.response()

    async def _collection_update(self, request: web.Request) -> web.Response:
        try:
            body, raw = await self._json(request)
            records = body.get("records") if isinstance(body, dict) else None
            if not isinstance(records, list):
                raise _refuse(400, "JSON_PARSER_ERROR", "records: required list is missing")
            if len(records) > MAX_COLLECTION:
                raise _refuse(
                    400,
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit "
                    f"more than {MAX_COLLECTION} records into this call",
                )
            parsed: list[tuple[SObject, Any, dict[str, Any]]] = []
            for item in records:  # the JSON layer refuses the whole request
                attrs = item.get("attributes") if isinstance(item, dict) else None
                sobject = attrs.get("type") if isinstance(attrs, dict) else None
                if not sobject:
                    raise _refuse(400, "INVALID_TYPE", "Must send a concrete entity type.")
                obj = self.objects.get(sobject)
                if obj is None:
                    raise _refuse(
                        400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported."
                    )
                rid = next((v for k, v in item.items() if k.lower() == "id"), None)
                parsed.append(
                    (obj, rid, self._deserialize(obj, item, raw, skip=("attributes", "id")))
                )
        except Refused as refused:
            return refused.response()

        all_or_none = bool(body.get("allOrNone", False))
        seen: set[str] = set()
        outcomes: list[tuple[str | None, list[SFError]]] = []
        staged: list[tuple[SObject, dict[str, Any], dict[str, Any]]] = []
        for obj, raw_id, changes in parsed:
            rid, rec, errors = self._collection_target(obj, raw_id, seen)
            if rec is not None:
                errors = self._check(obj, rec, changes, create=False)
                if not errors:
                    if all_or_none:
                        staged.append((obj, rec, changes))
                    else:
                        self._apply(obj.name, rec, changes)
            outcomes.append((rid, errors))
        failed = any(errors for _, errors in outcomes)
        if all_or_none and not failed:
            for obj, rec, changes in staged:
                self._apply(obj.name, rec, changes)
        results = []
        for rid, errors in outcomes:
            if all_or_none and failed and not errors:
                errors = [ROLLED_BACK]
            if errors:
                results.append({"success": False, "errors": [e.save() for e in errors]})
            else:
                results.append({"id": rid, "success": True, "errors": []})
        return web.json_response(results)

    async def _collection_create(self, request: web.Request) -> web.Response:
        """POST composite/sobjects: create up to 200 records of any writable types, a result per
        record in request order (`{id, success, errors}`); with `allOrNone` one failure rolls
        back all. The JSON layer (unknown type or field) refuses the whole request."""
        try:
            body, raw = await self._json(request)
            records = body.get("records") if isinstance(body, dict) else None
            if not isinstance(records, list):
                raise _refuse(400, "JSON_PARSER_ERROR", "records: required list is missing")
            if len(records) > MAX_COLLECTION:
                raise _refuse(
                    400,
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit "
                    f"more than {MAX_COLLECTION} records into this call",
                )
            parsed: list[tuple[SObject, bool, dict[str, Any]]] = []
            for item in records:
                attrs = item.get("attributes") if isinstance(item, dict) else None
                sobject = attrs.get("type") if isinstance(attrs, dict) else None
                if not sobject:
                    raise _refuse(400, "INVALID_TYPE", "Must send a concrete entity type.")
                obj = self.objects.get(sobject)
                if obj is None:
                    raise _refuse(
                        400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported."
                    )
                has_id = any(k.lower() == "id" and v is not None for k, v in item.items())
                parsed.append(
                    (obj, has_id, self._deserialize(obj, item, raw, skip=("attributes", "id")))
                )
        except Refused as refused:
            return refused.response()

        all_or_none = bool(body.get("allOrNone", False))
        outcomes: list[tuple[SObject, dict[str, Any], list[SFError]]] = []
        for obj, has_id, values in parsed:
            if not obj.writable:
                errors = [
                    SFError(
                        "INVALID_TYPE_FOR_OPERATION",
                        f"entity type {obj.name} does not support insert",
                    )
                ]
            elif has_id:
                errors = [SFError("INVALID_FIELD", "cannot specify Id in an insert call", ("Id",))]
            else:
                errors = self._check(obj, None, values, create=True)
            outcomes.append((obj, values, errors))
        failed = any(errors for _, _, errors in outcomes)
        results = []
        for obj, values, errors in outcomes:
            if all_or_none and failed and not errors:
                errors = [ROLLED_BACK]
            if errors:
                results.append({"success": False, "errors": [e.save() for e in errors]})
            else:
                rid = self._store(obj.name, None, values)
                results.append({"id": rid, "success": True, "errors": []})
        return web.json_response(results)

    def _collection_target(
        self, obj: SObject, raw_id: Any, seen: set[str]
    ) -> tuple[str | None, dict[str, Any] | None, list[SFError]]:
        if not obj.writable:
            return (
                None,
                None,
                [
                    SFError(
                        "INVALID_TYPE_FOR_OPERATION",
                        f"entity type {obj.name} does not support update",
                    )
                ],
            )
        if raw_id is None:
            return None, None, [SFError("MISSING_ARGUMENT", "Id not specified in an update call")]
        rid = normalize_id(raw_id)
        if rid is None:
            return None, None, [SFError("MALFORMED_ID", f"malformed id {raw_id}")]
        if rid[:3] != obj.prefix:
            return (
                None,
                None,
                [SFError("MALFORMED_ID", f"{obj.label} ID: id value of incorrect type: {raw_id}")],
            )
        if rid in seen:
            return None, None, [SFError("DUPLICATE_VALUE", f"Duplicate id in list: {raw_id}")]
        seen.add(rid)
        rec = self.records[obj.name].get(rid)
        if rec is None:
            return (
                None,
                None,
                [SFError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")],
            )
        if rec["IsDeleted"]:
            return None, None, [DELETED]
        return rid, rec, []

    async def _query(self, request: web.Request) -> web.Response:
        text = request.query.get("q")
        try:
            if not text:
                raise _refuse(400, "MALFORMED_QUERY", "A query string has to be specified")
            self.queries.append(text)
            total, rows = self._soql(text, request.match_info["version"])
        except Refused as refused:
            return refused.response()
        return web.json_response({"totalSize": total, "done": True, "records": rows})

    async def _userinfo(self, request: web.Request) -> web.Response:
        """OpenID Connect userinfo: who the bearer token belongs to (the API user)."""
        user = self.records["User"][self.api_user_id]
        return web.json_response(
            {
                "sub": f"https://login.salesforce.com/id/{ORG_ID}/{user['Id']}",
                "user_id": user["Id"],
                "organization_id": ORG_ID,
                "preferred_username": user["Username"],
                "nickname": str(user["Username"]).split("@")[0],
                "name": user["Name"],
                "given_name": user["FirstName"],
                "family_name": user["LastName"],
                "email": user["Email"],
                "email_verified": True,
                "active": bool(user["IsActive"]),
                "user_type": "STANDARD",
                "zoneinfo": "Etc/UTC",
                "locale": "en_US",
                "language": "en_US",
                "utcOffset": 0,
                "updated_at": user["LastModifiedDate"],
            }
        )

    # --- SOQL evaluation ---------------------------------------------------------------------
    def _no_column(self, name: str, obj: SObject) -> Refused:
        return _refuse(
            400,
            "INVALID_FIELD",
            f"No such column '{name}' on entity '{obj.name}'. If you are attempting to "
            "use a custom field, be sure to append the '__c' after the custom field "
            "name. Please reference your WSDL or the describe call for the appropriate "
            "names.",
        )

    def _resolve(self, obj: SObject, path: tuple[str, ...]) -> SField:
        """Checks a field path against the schema; returns the last field."""
        if len(path) == 1:
            fld = obj.field(path[0])
            if fld is None:
                raise self._no_column(path[0], obj)
            return fld
        rel = obj.relationship(path[0])
        if rel is None:
            raise _refuse(
                400,
                "INVALID_FIELD",
                f"Didn't understand relationship '{path[0]}' in field path. If you are "
                "attempting to use a custom relationship, be sure to append the '__r' "
                "after the custom relationship name. Please reference your WSDL or the "
                "describe call for the appropriate names.",
            )
        last: Refused | None = None
        for target in rel.reference_to:
            try:
                return self._resolve(self.objects[target], path[1:])
            except Refused as refused:
                last = refused
        assert last is not None
        raise last

    def _follow(
        self, rec: Mapping[str, Any], sobject: str, path: tuple[str, ...]
    ) -> tuple[str, Mapping[str, Any]] | None:
        """The record at the end of a relationship path (all but the last element)."""
        for part in path[:-1]:
            rel = self.objects[sobject].relationship(part)
            target = rec.get(rel.name) if rel else None
            found = self._find(target) if target else None
            if found is None:
                return None
            sobject, rec = found
        return sobject, rec

    def _get_path(self, rec: Mapping[str, Any], sobject: str, path: tuple[str, ...]) -> Any:
        end = self._follow(rec, sobject, path)
        if end is None:
            return None
        fld = self.objects[end[0]].field(path[-1])
        return end[1].get(fld.name) if fld else None

    def _project(
        self, rec: Mapping[str, Any], sobject: str, paths: list[tuple[str, ...]], version: str
    ) -> dict[str, Any]:
        obj = self.objects[sobject]
        out = self._row(sobject, rec, [], version)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for path in paths:
            if len(path) == 1:
                fld = obj.field(path[0])
                if fld:
                    out[fld.name] = rec.get(fld.name)
            else:
                groups.setdefault(path[0].lower(), []).append(path[1:])
        for rel_name, sub in groups.items():
            rel = obj.relationship(rel_name)
            assert rel is not None and rel.relationship is not None
            target = rec.get(rel.name)
            found = self._find(target) if target else None
            out[rel.relationship] = (
                self._project(found[1], found[0], sub, version) if found else None
            )
        return out

    def _soql(self, text: str, version: str) -> tuple[int, list[dict[str, Any]]]:
        """(totalSize, records) of a query."""
        query = _Parser(text).parse()
        obj = self.objects.get(query.sobject)
        if obj is None:
            raise _refuse(
                400,
                "INVALID_TYPE",
                f"sObject type '{query.sobject}' is not supported. If you are attempting "
                "to use a custom object, be sure to append the '__c' after the entity "
                "name. Please reference your WSDL or the describe call for the "
                "appropriate names.",
            )
        seen: set[str] = set()
        for path in query.select:
            self._resolve(obj, path)
            key = ".".join(path).lower()
            if key in seen:
                raise _refuse(400, "MALFORMED_QUERY", f"duplicate field selected: {'.'.join(path)}")
            seen.add(key)
        where = self._compile(obj, query.where) if query.where is not None else None
        rows = [
            r
            for r in self.records[obj.name].values()
            if not r.get("IsDeleted") and (where is None or where(r))
        ]
        if query.order:
            path, desc = query.order
            self._resolve(obj, path)
            present = [r for r in rows if self._get_path(r, obj.name, path) is not None]
            nulls = [r for r in rows if self._get_path(r, obj.name, path) is None]
            present.sort(key=lambda r: self._get_path(r, obj.name, path), reverse=desc)
            rows = present + nulls if desc else nulls + present
        if query.limit is not None:
            rows = rows[: query.limit]
        if query.count:
            return len(rows), []
        return len(rows), [self._project(r, obj.name, query.select, version) for r in rows]

    def _compile(self, obj: SObject, expr: Expr) -> Callable[[Mapping[str, Any]], bool]:
        if isinstance(expr, Cond):
            return self._compile_cond(obj, expr)
        op, arg = expr
        if op == "not":
            inner = self._compile(obj, arg)
            return lambda r: not inner(r)
        parts = [self._compile(obj, e) for e in arg]
        combine = all if op == "and" else any
        return lambda r: combine(p(r) for p in parts)

    def _literal(self, fld: SField, tok: Tok) -> Any:
        kind, text = tok
        if kind == "word" and text.lower() == "null":
            return None
        if fld.type in ("id", "reference"):
            rid = normalize_id(text) if kind == "str" else None
            if rid is None:
                raise _refuse(400, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {text}")
            return rid
        quoted = kind == "str"
        if fld.type in NUMERIC | {"boolean", "date", "datetime"} and quoted:
            kind_name = {"currency": "double", "percent": "double", "boolean": "boolean"}.get(
                fld.type, fld.type
            )
            raise _refuse(
                400,
                "INVALID_FIELD",
                f"value of filter criterion for field '{fld.name}' must be of type "
                f"{kind_name} and should not be enclosed in quotes",
            )
        try:
            if fld.type in NUMERIC:
                return float(text)
            if fld.type == "boolean":
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                return text.lower() == "true"
            if fld.type == "date":
                return date.fromisoformat(text).isoformat()
            if fld.type == "datetime":
                moment = datetime.fromisoformat(text)
                return format_dt(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        except ValueError:
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{text}'") from None
        if not quoted and fld.type != "anyType":
            raise _refuse(400, "MALFORMED_QUERY", f"unexpected token: '{text}'")
        return text

    def _compile_cond(self, obj: SObject, cond: Cond) -> Callable[[Mapping[str, Any]], bool]:
        fld = self._resolve(obj, cond.path)
        values = [self._literal(fld, tok) for tok in cond.values]
        text_like = fld.type in STRINGY - {"id", "reference"}

        def norm(v: Any) -> Any:
            return v.lower() if text_like and isinstance(v, str) else v

        wanted = [norm(v) for v in values]

        def test(rec: Mapping[str, Any]) -> bool:
            have = norm(self._get_path(rec, obj.name, cond.path))
            if cond.op in ("IN", "NOT IN"):
                return (have in wanted) == (cond.op == "IN")
            want = wanted[0]
            if cond.op == "=":
                return have == want
            if cond.op == "!=":
                return have != want
            if have is None or want is None:
                return False
            if cond.op == "LIKE":
                pattern = re.escape(str(want)).replace("%", ".*").replace("_", ".")
                return re.fullmatch(pattern, str(have), re.S) is not None
            return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[
                cond.op
            ]

        return test

    # --- helpers for tests (no HTTP) ---------------------------------------------------------
    def ids(self, sobject: str) -> list[str]:
        return [rid for rid, r in self.records[sobject].items() if not r["IsDeleted"]]

    def record(self, sobject: str, rid: str) -> dict[str, Any]:
        return dict(self.records[sobject][normalize_id(rid) or rid])

    def value(self, sobject: str, rid: str, field_name: str) -> Any:
        return self.record(sobject, rid).get(field_name)

    def create(self, sobject: str, values: Mapping[str, Any], *, user_id: str | None = None) -> str:
        """Insert a record as-is (no validation); returns its id."""
        return self._store(sobject, None, values, user_id=user_id)

    def delete(self, sobject: str, rid: str) -> None:
        self.records[sobject][normalize_id(rid) or rid]["IsDeleted"] = True

    def human_edit(
        self,
        sobject: str,
        rid: str,
        field_name: str,
        value: Any,
        *,
        user_id: str = seed.OWNERS[0].sf_user_id,
    ) -> None:
        """A person edits the record in Salesforce: no validation, history and timestamps move."""
        self._apply(
            sobject,
            self.records[sobject][normalize_id(rid) or rid],
            {field_name: value},
            user_id=user_id,
        )

    def activities(
        self, record_id: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Tasks and Notes (each with `attributes.type`), optionally only those on one record."""
        rid = normalize_id(record_id) if record_id else None
        out = []
        for sobject, links in (("Task", ("WhatId", "WhoId")), ("Note", ("ParentId",))):
            for rec in self.records[sobject].values():
                if rec["IsDeleted"] and not include_deleted:
                    continue
                if rid is None or any(rec.get(link) == rid for link in links):
                    out.append({"attributes": {"type": sobject}, **rec})
        return out

    def history(self, sobject: str, rid: str) -> list[dict[str, Any]]:
        hist, parent_field = self.objects[sobject].history or ("", "")
        target = normalize_id(rid)
        return [dict(h) for h in self.records.get(hist, {}).values() if h[parent_field] == target]

    def add_validation_rule(
        self,
        sobject: str,
        predicate: Callable[[Mapping[str, Any]], bool],
        message: str,
        *,
        field: str | None = None,
    ) -> ValidationRule:
        """Like a Salesforce validation rule: `predicate(record after the change)` True = error."""
        rule = ValidationRule(sobject, predicate, message, field)
        self.rules.append(rule)
        return rule

    def clear_validation_rules(self) -> None:
        self.rules.clear()

    def rename_field(self, sobject: str, old: str, new: str) -> None:
        obj = self.objects[sobject]
        fld = obj.fields.pop(old)
        fld.name = new
        obj.fields[new] = fld
        for rec in self.records[sobject].values():
            rec[new] = rec.pop(old, None)
        tracked = self.tracked.get(sobject, set())
        if old in tracked:
            tracked.discard(old)
            tracked.add(new)

    def set_updateable(self, sobject: str, field_name: str, updateable: bool) -> None:
        self.objects[sobject].fields[field_name].updateable = updateable

    def track_field(self, sobject: str, field_name: str, tracked: bool = True) -> None:
        fields = self.tracked.setdefault(sobject, set())
        (fields.add if tracked else fields.discard)(field_name)


__all__ = ["SalesforceStandIn", "SField", "SObject", "SFError", "normalize_id", "to18"]
