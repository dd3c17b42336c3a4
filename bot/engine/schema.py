"""The CRM's schema, as the gate sees it: a cached `describe`, the policy checked against it, the
values an agent proposes checked against each field's type, and a periodic watch for drift.

* `SchemaCache` keeps each object's `describe` for a while (10 minutes by default) and lets
  concurrent callers for the same object share one call.
* `check_policy` says which fields listed in tiers.yaml the CRM no longer has, or no longer lets
  the gate write, as `Finding`s.
* `validate_value` / `validate_changes` give the message an agent sees when a proposed value
  cannot be right for the field (a stage that does not exist, "soon" for a date).
* `SchemaWatch` runs `check_policy` periodically, alerts once per change (not once per run), and
  tells intake which fields to refuse while they are broken (`blocked_fields`).

Nothing here imports a CRM client: the CRM is reached only through `bot.engine.ports.CRM`.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from bot.domain import Tier
from bot.engine.ports import CRM, CRMError, CRMErrorKind, FieldSchema
from bot.policy import Policy

Problem = Literal["missing_object", "missing_field", "not_writable", "unknown_option"]
Severity = Literal["error", "warning"]

DEFAULT_TTL = 600.0  # seconds a describe is trusted
MAX_LISTED_OPTIONS = 30  # allowed values named in one message
MAX_SUGGESTIONS = 3

# A describe that fails with these means: this object type does not exist (HubSpot answers an
# unknown object type with 400 "Unable to infer object type", Salesforce with 404 NOT_FOUND).
MISSING_OBJECT_KINDS = (CRMErrorKind.NOT_FOUND, CRMErrorKind.VALIDATION)


# --- the cache -----------------------------------------------------------------------------------
class SchemaCache:
    """`describe` results per object type, trusted for `ttl` seconds.

    Concurrent `get`s for the same object share one describe call. A failed describe raises
    (`CRMError`) to every caller waiting on it and is not cached: the next `get` tries again.
    `invalidate` forgets cached schemas; a describe already under way when it is called is not
    cached either (it may have read the schema from before the change).
    """

    def __init__(
        self,
        crm: CRM,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crm = crm
        self.ttl = ttl
        self._clock = clock
        self._cached: dict[str, tuple[float, dict[str, FieldSchema]]] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, FieldSchema]]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped by invalidate() of everything

    async def get(self, object_type: str) -> dict[str, FieldSchema]:
        """The object's fields keyed by API name (a copy: callers may keep or change it)."""
        cached = self._cached.get(object_type)
        if cached is not None and self._clock() - cached[0] < self.ttl:
            return dict(cached[1])
        task = self._inflight.get(object_type)
        if task is None:
            task = asyncio.create_task(self._load(object_type), name=f"describe {object_type}")
            task.add_done_callback(_retrieve)
            self._inflight[object_type] = task
        # A caller that gives up (cancelled, timed out) must not cancel the describe for the rest.
        return dict(await asyncio.shield(task))

    def peek(self, object_type: str) -> dict[str, FieldSchema] | None:
        """The cached schema if there is a fresh one, without calling the CRM."""
        cached = self._cached.get(object_type)
        if cached is not None and self._clock() - cached[0] < self.ttl:
            return dict(cached[1])
        return None

    def invalidate(self, object_type: str | None = None) -> None:
        """Forget one object's schema, or every object's."""
        if object_type is None:
            self._cached.clear()
            self._inflight.clear()
            self._epoch += 1
        else:
            self._cached.pop(object_type, None)
            self._inflight.pop(object_type, None)
            self._generation[object_type] = self._generation.get(object_type, 0) + 1

    def _stamp(self, object_type: str) -> tuple[int, int]:
        return self._epoch, self._generation.get(object_type, 0)

    async def _load(self, object_type: str) -> dict[str, FieldSchema]:
        stamp = self._stamp(object_type)
        started = self._clock()
        try:
            schema = await self.crm.describe(object_type)
        finally:
            if self._inflight.get(object_type) is asyncio.current_task():
                del self._inflight[object_type]
        if self._stamp(object_type) == stamp:
            self._cached[object_type] = (started, schema)
        return schema


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a describe's failure as seen, for when every caller waiting on it has gone."""
    if not task.cancelled():
        task.exception()


# --- findings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One way the policy and the CRM's schema disagree.

    `field` is None for `missing_object`. `detail` says why the field matters (its tier, or that
    it is the object's owner_field / name_field); `suggestions` are existing fields with similar
    names or labels, for a missing field; `value` is the option concerned, for `unknown_option`.
    """

    crm: str
    object_type: str
    field: str | None
    problem: Problem
    severity: Severity
    suggestions: tuple[str, ...] = ()
    detail: str = ""
    value: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None, str, str, str | None]:
        """What identifies the finding from one check to the next (suggestions may vary)."""
        return (
            self.crm,
            self.object_type,
            self.field,
            self.problem,
            self.severity,
            self.value,
        )

    @property
    def where(self) -> str:
        return f"{self.crm} {self.object_type}" + (f".{self.field}" if self.field else "")

    @property
    def message(self) -> str:
        if self.problem == "missing_object":
            text = "the object does not exist in the CRM (or the gate's credentials cannot see it)"
        elif self.problem == "missing_field":
            text = "the field does not exist in the CRM (was it renamed?)"
        elif self.problem == "not_writable":
            text = "the field is read-only in the CRM, so the gate cannot write it"
        else:
            text = f"{self.value!r} is not an option of the field in the CRM"
        parts = [f"{self.where}: {text}"]
        if self.detail:
            parts.append(self.detail)
        if self.suggestions:
            parts.append("similar fields: " + ", ".join(self.suggestions))
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.message


def suggest(name: str, schema: Mapping[str, FieldSchema], n: int = MAX_SUGGESTIONS) -> list[str]:
    """Existing fields whose name or label is close to `name`, best first."""
    candidates: dict[str, str] = {}  # squashed name or label -> field name
    for spec in schema.values():
        for text in (spec.name, spec.label):
            key = _squash(text)
            if key:
                candidates.setdefault(key, spec.name)
    wanted = _squash(name)
    if not wanted:
        return []
    found: list[str] = []
    for match in difflib.get_close_matches(wanted, list(candidates), n=n * 2, cutoff=0.6):
        if candidates[match] not in found and candidates[match] != name:
            found.append(candidates[match])
    return found[:n]


def _squash(text: str) -> str:
    """'Deal Stage', 'deal_stage' and 'dealstage' all become 'dealstage'."""
    return re.sub(r"[^0-9a-z]+", "", text.lower())


# --- the policy against the schema ---------------------------------------------------------------
async def check_policy(policy: Policy, crm_name: str, schemas: SchemaCache) -> list[Finding]:
    """Every field tiers.yaml lists for `crm_name` must exist, and be writable unless it is
    read_only; each object's owner_field and name_field must exist.

    A missing read_only field is a warning; everything else is an error. An object whose
    describe says it does not exist is one `missing_object` error. Any other describe failure
    (outage, rate limit, bad token) raises `CRMError`: it says nothing about the schema.
    """
    objects = policy.objects.get(crm_name, {})
    names = list(objects)
    results = await asyncio.gather(*(schemas.get(n) for n in names), return_exceptions=True)
    findings: list[Finding] = []
    for obj_name, result in zip(names, results, strict=True):
        obj = objects[obj_name]
        if isinstance(result, CRMError) and result.kind in MISSING_OBJECT_KINDS:
            findings.append(
                Finding(
                    crm_name,
                    obj_name,
                    None,
                    "missing_object",
                    "error",
                    detail=f"the CRM said: {result.message[:300]}",
                )
            )
            continue
        if isinstance(result, BaseException):
            raise result
        schema = result
        # field -> (tiers it is listed with, roles it plays)
        tiers: dict[str, Tier] = {name: rule.tier for name, rule in obj.fields.items()}
        roles: dict[str, list[str]] = {}
        if obj.owner_field:
            roles.setdefault(obj.owner_field, []).append("owner_field")
        if obj.name_field:
            roles.setdefault(obj.name_field, []).append("name_field")
        for name in [*tiers, *(r for r in roles if r not in tiers)]:
            tier = tiers.get(name)
            why = _why(obj_name, tier, roles.get(name, []))
            spec = schema.get(name)
            if spec is None:
                required = name in roles or (tier is not None and tier != Tier.READ_ONLY)
                findings.append(
                    Finding(
                        crm_name,
                        obj_name,
                        name,
                        "missing_field",
                        "error" if required else "warning",
                        suggestions=tuple(suggest(name, schema)),
                        detail=why,
                    )
                )
            elif not spec.writable and tier is not None and tier != Tier.READ_ONLY:
                findings.append(
                    Finding(crm_name, obj_name, name, "not_writable", "error", detail=why)
                )
    return findings


def _why(object_type: str, tier: Tier | None, roles: list[str]) -> str:
    reasons = [f"tiers.yaml lists it as {tier.value}"] if tier is not None else []
    reasons += [f"it is the {role} of {object_type} in tiers.yaml" for role in roles]
    return ", and ".join(reasons)


# --- proposed values against the field -----------------------------------------------------------
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EPOCH_MS = re.compile(r"-?\d+")
_SCALARS = (str, int, float, bool, Decimal, date)  # datetime is a date


def validate_value(spec: FieldSchema, value: Any) -> str | None:
    """Why `value` cannot be right for the field, in words an agent can act on; None if it can.

    None (and "") clears a field and is accepted for every type. The check is of form only: the
    CRM's own rules (validation rules, required fields) still apply when the value is written.
    """
    if value is None or value == "":
        return None
    what = _field_words(spec)
    if not isinstance(value, _SCALARS):
        return f"{what} takes a single value, not {type(value).__name__}"
    kind = spec.type
    if kind == "enumeration":
        return _check_option(spec, value, what)
    if kind == "number":
        if _is_number(value):
            return None
        return f"{what} takes a number; {_show(value)} is not one"
    if kind == "bool":
        if isinstance(value, bool) or (
            isinstance(value, str) and value.strip().lower() in ("true", "false")
        ):
            return None
        return f"{what} takes true or false; {_show(value)} is neither"
    if kind == "date":
        return _check_date(value, what)
    if kind == "datetime":
        if _is_datetime(value):
            return None
        return (
            f"{what} takes an ISO 8601 date-time (e.g. 2024-05-01T14:30:00Z) or epoch "
            f"milliseconds; {_show(value)} is neither"
        )
    return None  # string, text, and types this gate does not know: any scalar


def validate_changes(
    schema: Mapping[str, FieldSchema],
    changes: Mapping[str, Any],
    *,
    object_type: str = "this object",
) -> dict[str, str]:
    """{field: why its proposed value cannot be written} for every change that cannot be."""
    problems: dict[str, str] = {}
    for name, value in changes.items():
        spec = schema.get(name)
        if spec is None:
            text = f"field {name} does not exist on {object_type}"
            near = [s.name for s in schema.values() if s.name.lower() == name.lower()]
            near = near or suggest(name, schema)
            if near:
                text += " (did you mean " + " or ".join(near) + "?)"
            problems[name] = text
        elif not spec.writable:
            problems[name] = f"field {name} is read-only in the CRM"
        else:
            message = validate_value(spec, value)
            if message is not None:
                problems[name] = message
    return problems


def _field_words(spec: FieldSchema) -> str:
    if spec.label and spec.label != spec.name:
        return f"{spec.name} ({spec.label})"
    return spec.name


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def _as_text(value: Any) -> str:
    """A value as the CRM would spell it in an option list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_option(spec: FieldSchema, value: Any, what: str) -> str | None:
    if not spec.options:
        return None  # the options live elsewhere (e.g. HubSpot's owners): nothing to check here
    values = {o.value for o in spec.options}
    text = _as_text(value)
    if text in values:
        return None
    if ";" in text and all(part in values for part in text.split(";")):
        return None  # a multiple-choice field's value: options joined by ";"
    hint = ""
    folded = text.strip().casefold()
    for option in spec.options:
        if folded in (option.value.casefold(), option.label.casefold()):
            hint = f" (did you mean {_show(option.value)}? give the value, not the label)"
            break
    shown = [
        _show(o.value) + (f" ({o.label})" if o.label and o.label != o.value else "")
        for o in spec.options[:MAX_LISTED_OPTIONS]
    ]
    if len(spec.options) > MAX_LISTED_OPTIONS:
        shown.append(f"… and {len(spec.options) - MAX_LISTED_OPTIONS} more")
    return f"{_show(value)} is not an allowed value of {what}{hint}; allowed values: " + ", ".join(
        shown
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Decimal):
        return value.is_finite()
    return isinstance(value, str) and _NUMBER.fullmatch(value.strip()) is not None


def _check_date(value: Any, what: str) -> str | None:
    wrong = f"{what} takes a date as YYYY-MM-DD; {_show(value)} is not one"
    if isinstance(value, datetime):
        moment: datetime | None = value
    elif isinstance(value, date):
        return None
    elif isinstance(value, str):
        text = value.strip()
        if _DATE.fullmatch(text):
            try:
                date.fromisoformat(text)
            except ValueError:
                return f"{what} takes a date as YYYY-MM-DD; {_show(value)} is not a real day"
            return None
        moment = _parse_iso(text) if len(text) > 10 else None
    else:
        return wrong
    if moment is None:
        return wrong
    # HubSpot stores a date as midnight UTC, and accepts exactly that as a date-time.
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    if (utc.hour, utc.minute, utc.second, utc.microsecond) != (0, 0, 0, 0):
        return (
            f"{what} takes a date as YYYY-MM-DD; {_show(value)} is a date-time that is not "
            "midnight UTC"
        )
    return None


def _is_datetime(value: Any) -> bool:
    if isinstance(value, datetime | date):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | Decimal):
        return _epoch_ms(value)
    if isinstance(value, str):
        text = value.strip()
        if _EPOCH_MS.fullmatch(text):
            return _epoch_ms(int(text))
        return _parse_iso(text) is not None
    return False


def _epoch_ms(value: int | float | Decimal) -> bool:
    if isinstance(value, float | Decimal) and not (
        math.isfinite(value) and float(value).is_integer()
    ):
        return False
    try:
        datetime.fromtimestamp(int(value) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def _parse_iso(text: str) -> datetime | None:
    if not text or not text[:4].isdigit():
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# --- the periodic drift check --------------------------------------------------------------------
class SchemaWatch:
    """Checks the policy against the CRM's schema on every `run_once` (called periodically).

    `on_change(new, resolved)` is awaited only when the findings differ from those last reported,
    so a drift that persists raises one alert, and its fix one more. If `on_change` raises, the
    change stays unreported and is offered again on the next run. A describe that fails for a
    reason other than a missing object (outage, rate limit) raises out of `run_once` and leaves
    the previous findings (and `blocked_fields`) as they were.
    """

    def __init__(
        self,
        policy: Policy,
        crm_name: str,
        schemas: SchemaCache,
        *,
        on_change: Callable[[list[Finding], list[Finding]], Awaitable[None]],
    ) -> None:
        self.policy = policy
        self.crm_name = crm_name
        self.schemas = schemas
        self.on_change = on_change
        self.findings: list[Finding] = []  # as of the last successful check
        self._reported: dict[tuple[Any, ...], Finding] = {}
        self._lock = asyncio.Lock()

    async def run_once(self) -> list[Finding]:
        async with self._lock:
            self.schemas.invalidate()
            findings = await check_policy(self.policy, self.crm_name, self.schemas)
            self.findings = findings
            current = {f.key: f for f in findings}
            new = [f for k, f in current.items() if k not in self._reported]
            resolved = [f for k, f in self._reported.items() if k not in current]
            if new or resolved:
                await self.on_change(new, resolved)
            self._reported = current
            return findings

    def blocked_fields(self) -> dict[tuple[str, str], str]:
        """(object, field) -> why, for every field currently failing with severity error.

        A missing object blocks every field tiers.yaml lists for it.
        """
        blocked: dict[tuple[str, str], str] = {}
        for finding in self.findings:
            if finding.severity != "error":
                continue
            if finding.field is not None:
                blocked.setdefault((finding.object_type, finding.field), finding.message)
                continue
            obj = self.policy.object(self.crm_name, finding.object_type)
            for name in obj.fields if obj else ():
                blocked.setdefault((finding.object_type, name), finding.message)
        return blocked

    def blocked_objects(self) -> dict[str, str]:
        """object -> why, for objects the CRM says do not exist (activities on them will fail)."""
        return {
            f.object_type: f.message
            for f in self.findings
            if f.problem == "missing_object" and f.severity == "error"
        }
