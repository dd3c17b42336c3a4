"""The HTTP face: the agent API (/v1/...), /openapi.json, /healthz, and Slack's /slack/events.

Handlers are thin: authenticate, parse, call one engine use-case, shape the answer. Every error
an agent can cause is a 4xx with a JSON body naming the problem.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from bot import jsontext
from bot.domain import ChangeDetail, ProposalDetail, ProposalIn
from bot.engine.intake import ProposalRejected
from bot.ledger.repo import Agent, IdempotencyMismatch
from bot.openapi import openapi_document

if TYPE_CHECKING:
    from bot.app import Gate

log = logging.getLogger(__name__)

GATE: web.AppKey[Gate] = web.AppKey("gate")
MAX_KEY_LENGTH = 255
AGENT_CACHE_SECONDS = 5.0

json_response = functools.partial(web.json_response, dumps=jsontext.dumps)


class NonFinite(ValueError):
    """A number JSON cannot hold: Python's parser takes `NaN`, `Infinity` and `1e999`, which
    no CRM would accept and a PostgreSQL JSON column refuses."""


def _not_a_number(name: str) -> float:
    raise NonFinite(f"{name} is not a JSON value")


class OutOfRange(ValueError):
    """An integer beyond 64 bits: SQLite would store it as a float, and no CRM number field
    holds it exactly."""


def _int64(text: str) -> int:
    # Checked by length first: `int()` of thousands of digits is refused by Python itself.
    value = int(text) if len(text) <= 20 else 2**64
    if not -(2**63) <= value < 2**63:
        raise OutOfRange(f"the integer {text[:40]} is beyond 64-bit integers; send it as a string")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFinite(f"the number {text[:40]} is too large")
    return value


# One decoder for every request: `json.loads` with hooks builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_not_a_number, parse_float=_finite, parse_int=_int64)


def parse_json(raw: bytes) -> Any:
    """`json.loads` (any of the encodings it detects), refusing numbers JSON cannot hold."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def error(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> web.Response:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    return json_response({"error": detail, **extra}, status=status)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Framework errors on the agent API (404, 405, 413) answer JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.content_type == "application/json":
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        return error(exc.status, code, exc.reason)


class AgentAuth:
    """Bearer agent keys, cached briefly so intake does not hit the database for each request.

    When a key's entry runs out, the requests in flight with that key wait for one lookup
    rather than each making its own: an agent with hundreds of requests in flight would
    otherwise take every pooled connection at once, every few seconds."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._cache: dict[str, tuple[float, Agent | None]] = {}
        self._lookups: dict[str, asyncio.Future[Agent | None]] = {}

    async def __call__(self, request: web.Request) -> Agent | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        key = key.strip()
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < AGENT_CACHE_SECONDS:
            return hit[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a client that hangs up does not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def _finished(self, key: str, lookup: asyncio.Future[Agent | None]) -> None:
        self._lookups.pop(key, None)
        if not lookup.cancelled():
            lookup.exception()  # the waiters have it; retrieved here when every one hung up

    async def _lookup(self, key: str) -> Agent | None:
        agent = await self.gate.ledger.agent_by_key(key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), agent)
        return agent


def unauthorized() -> web.Response:
    resp = error(401, "unauthorized", "a valid agent key is required: Authorization: Bearer <key>")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="crm-gate"'
    return resp


async def post_proposal(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    agent = await gate.auth(request)
    if agent is None:
        return unauthorized()
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return error(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    if len(key) > MAX_KEY_LENGTH:
        return error(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters",
        )
    limit = gate.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error(
            413,
            "body_too_large",
            f"the body is {request.content_length} bytes; at most {limit} are accepted",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, "body_too_large", f"the body is larger than {limit} bytes")
    if len(raw) > limit:
        return error(
            413, "body_too_large", f"the body is {len(raw)} bytes; at most {limit} are accepted"
        )
    try:
        body = parse_json(raw)
    except NonFinite as exc:
        return error(400, "malformed_json", f"the body is not valid JSON: {exc}")
    except OutOfRange as exc:
        return error(422, "invalid_body", str(exc))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = (
            f" at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        return error(
            400, "malformed_json", f"the body is not valid JSON{where}: {getattr(exc, 'msg', exc)}"
        )
    if not isinstance(body, dict):
        return error(422, "invalid_body", "the body must be a JSON object")
    try:
        proposal = ProposalIn.model_validate(body)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]}
            for e in exc.errors()
        ]
        first = problems[0]
        where = f"{first['field']}: " if first["field"] else ""
        return error(
            422, "invalid_body", f"{where}{first['message']}", first["field"], problems=problems
        )
    try:
        stored = await gate.intake.submit(agent, key, body, proposal)
    except ProposalRejected as exc:
        return error(exc.status, exc.code, exc.message, exc.field)
    except IdempotencyMismatch:
        return error(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; use a new key for a new proposal",
        )
    resp = json_response(stored.body, status=stored.status)
    if stored.replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


async def get_proposal(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    agent = await gate.auth(request)
    if agent is None:
        return unauthorized()
    proposal_id = request.match_info["proposal_id"]
    row = await gate.ledger.proposal(proposal_id)
    # Agents see their own proposals only; another agent's id is as good as unknown.
    if row is None or row["agent_id"] != agent.id:
        return error(404, "not_found", f"no proposal {proposal_id!r}")
    return json_response(proposal_detail(row).model_dump(mode="json"))


def proposal_detail(row: dict[str, Any]) -> ProposalDetail:
    return ProposalDetail(
        id=row["id"],
        agent=row["agent"],
        crm=row["crm"],
        object=row["object_type"],
        record_id=row["record_id"],
        reason=row["reason"],
        evidence=row["evidence"] or [],
        run_id=row["run_id"],
        callback_url=row["callback_url"],
        created_at=row["created_at"],
        changes=[
            ChangeDetail(
                id=c["id"],
                kind=c["kind"],
                field=c["field"],
                tier=c["tier"],
                mode=c["mode"],
                status=c["status"],
                reason=c["reason"],
                proposed=c["proposed"],
                observed=c["observed"] if c["has_observed"] else None,
                approved=c["approved"] if c["decided_at"] else None,
                before=c["before"] if c["before_captured"] else None,
                written=c["written"],
                error=c["error"],
                activity_id=c["activity_id"],
                decided_by=c["decided_by"],
                decided_at=c["decided_at"],
                committed_at=c["committed_at"],
                updated_at=c["updated_at"],
            )
            for c in row["changes"]
        ],
    )


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    return web.Response(body=gate.metrics.render(), headers={"Content-Type": gate.metrics.content_type})


async def shadow_report(request: web.Request) -> web.Response:
    from bot.config import parse_duration
    from bot.engine.shadow import live_report, report_json
    from bot.ledger.repo import utcnow

    gate = request.app[GATE]
    if await gate.auth(request) is None:
        return unauthorized()
    try:
        window = parse_duration(request.query.get("since", "14d"))
    except ValueError as exc:
        return error(400, "invalid_since", f"since: {exc}", "since")
    since = utcnow() - window
    reports = await gate.shadow.report(since)
    return json_response(report_json(reports, since, await live_report(gate.ledger, since)))


async def healthz(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    try:
        await gate.ledger.ping()
    except Exception as exc:  # any database failure makes the replica unhealthy
        return json_response({"status": "unhealthy", "database": str(exc)[:200]}, status=503)
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    return json_response(
        {
            "status": "ok",
            "crm": gate.settings.crm,
            "sandbox": gate.settings.crm_sandbox,
            "event_loop": "uvloop" if loop == "uvloop" else "asyncio",
        }
    )


def build_web_app(gate: Gate) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=gate.settings.max_body_bytes)
    app[GATE] = gate
    app.router.add_post("/v1/proposals", post_proposal)
    app.router.add_get("/v1/proposals/{proposal_id}", get_proposal)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/shadow/report", shadow_report)
    if gate.settings.slack_app_token is None:
        from bot.slack.app import events_route

        app.router.add_routes([events_route(gate.bolt)])
    if gate.slack_stand_in is not None and gate.settings.crm_sandbox:
        from bot.sandbox.page import sandbox_routes

        app.router.add_routes(sandbox_routes(gate))
    return app
