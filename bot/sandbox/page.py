"""The sandbox page at /sandbox/: try the gate as a rep, as ops and as an agent, in one browser tab.

Mounted by `bot.web.build_web_app` only when both the CRM and Slack are the in-process stand-ins,
so none of these routes exists next to a real CRM or a real workspace. The page is plain
HTML/CSS/JS from `static/` (no build step, nothing fetched from the internet) and talks to a
small JSON API here:

    GET  /sandbox/api/config                       people, channels, the CRM's labels and tiers
    GET  /sandbox/api/agent-key                    the key of the agent "sandbox-page"
    GET  /sandbox/api/slack/{user}                 what that Slack user sees: DM, channels,
                                                   ephemerals, open modals, App Home
    POST /sandbox/api/slack/{user}/{action}        act as that user: click, click_home, submit,
                                                   close, command, open_home
    GET  /sandbox/api/crm                          the stand-in's deals, contacts and companies
    GET  /sandbox/api/crm/{object}/{id}/history    the ledger's proposals and changes for a record

Slack actions go through the Slack stand-in's driving helpers, which send the same signed
payloads Slack sends to the gate's /slack/events: the page exercises the real Slack face.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import select

from bot.ledger.tables import agents, changes, proposals
from bot.sandbox import seed
from bot.sandbox.slack import AppRejected

if TYPE_CHECKING:
    from bot.app import Gate

STATIC = Path(__file__).parent / "static"
AGENT_NAME = "sandbox-page"
OBJECTS = ("deals", "contacts", "companies")
HISTORY_LIMIT = 50
ROLES = {p.slack_id: "rep" for p in seed.OWNERS} | {
    seed.OPS_USER.slack_id: "ops",
    seed.OUTSIDER.slack_id: "outsider",
}
ACTION_ERRORS = (
    KeyError,
    LookupError,
    PermissionError,
    ValueError,
    TypeError,
    TimeoutError,
    RuntimeError,
    AppRejected,
)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(data: Any, status: int = 200) -> web.Response:
    resp = web.json_response(data, status=status, dumps=partial(json.dumps, default=_default))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _refused(message: str, status: int = 400) -> web.Response:
    return _json({"ok": False, "error": message}, status)


class SandboxPage:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._key: str | None = None
        self._key_lock = asyncio.Lock()

    # --- the stand-ins ------------------------------------------------------------------------
    @property
    def slack(self) -> Any:
        return self.gate.slack_stand_in

    @property
    def hubspot(self) -> Any:
        return next(s for s in self.gate.stand_ins if s.name == "hubspot")

    @property
    def alerts_channel(self) -> str:
        return self.gate.settings.slack_alerts_channel or seed.ALERTS_CHANNEL

    @property
    def reviews_channel(self) -> str:
        return self.gate.settings.review_fallback_channel or seed.FALLBACK_CHANNEL

    def _user(self, request: web.Request) -> str:
        user = request.match_info["user"]
        if user not in ROLES:
            raise web.HTTPNotFound(text=f"no sandbox Slack user {user}")
        return user

    # --- the page -----------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        allowed = {p.name for p in STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        people = [
            {
                "id": p.slack_id,
                "name": p.name,
                "first": p.first,
                "email": p.email,
                "role": ROLES[p.slack_id],
                "owner_id": p.owner_id or None,
            }
            for p in seed.SLACK_USERS
        ]
        hubspot = self.hubspot
        crm = self.gate.settings.policy_crm
        objects: dict[str, Any] = {}
        for object_type in OBJECTS:
            policy = self.gate.policy.object(crm, object_type)
            schema = hubspot.schemas[object_type]
            objects[object_type] = {
                "name_field": policy.name_field if policy else None,
                "owner_field": policy.owner_field if policy else None,
                "fields": {
                    name: {"tier": rule.tier.value, "mode": rule.mode.value}
                    for name, rule in (policy.fields.items() if policy else ())
                },
                "activities": {
                    kind: {"tier": rule.tier.value, "mode": rule.mode.value}
                    for kind, rule in (policy.activities.items() if policy else ())
                },
                "labels": {name: prop["label"] for name, prop in schema.items()},
                "options": {
                    name: {o["value"]: o["label"] for o in prop["options"]}
                    for name, prop in schema.items()
                    if prop["options"]
                },
            }
        return _json(
            {
                "people": people,
                "bot_user_id": self.slack.bot_user_id,
                "channels": {
                    "alerts": {
                        "id": self.alerts_channel,
                        "name": self._channel_name(self.alerts_channel),
                    },
                    "reviews": {
                        "id": self.reviews_channel,
                        "name": self._channel_name(self.reviews_channel),
                    },
                },
                "objects": objects,
            }
        )

    def _channel_name(self, channel: str) -> str:
        known = {
            seed.ALERTS_CHANNEL: seed.ALERTS_CHANNEL_NAME,
            seed.FALLBACK_CHANNEL: seed.FALLBACK_CHANNEL_NAME,
        }
        return known.get(channel, channel)

    async def agent_key(self, request: web.Request) -> web.Response:
        """One key per process, made on first use: every tab of the page shares it."""
        async with self._key_lock:
            if self._key is None:
                _, self._key = await self.gate.ledger.create_agent(AGENT_NAME, replace=True)
        return _json({"agent": AGENT_NAME, "key": self._key})

    # --- Slack, as one user -------------------------------------------------------------------
    async def slack_state(self, request: web.Request) -> web.Response:
        user = self._user(request)
        slack = self.slack
        dm = slack.dm_channel(user)
        return _json(
            {
                "user": user,
                "channels": {
                    "dm": {"id": dm, "messages": slack.messages(dm)},
                    "alerts": {
                        "id": self.alerts_channel,
                        "messages": slack.messages(self.alerts_channel),
                    },
                    "reviews": {
                        "id": self.reviews_channel,
                        "messages": slack.messages(self.reviews_channel),
                    },
                },
                "ephemerals": slack.ephemerals(user),
                "views": slack.views(user),
                "home": slack.home(user),
            }
        )

    async def slack_action(self, request: web.Request) -> web.Response:
        user = self._user(request)
        action = request.match_info["action"]
        try:
            body = await request.json()
        except ValueError:
            return _refused("the body must be JSON")
        if not isinstance(body, dict):
            return _refused("the body must be a JSON object")
        slack = self.slack
        try:
            if action == "click":
                answer = await slack.click(
                    user,
                    body["channel"],
                    body["ts"],
                    body["action_id"],
                    block_id=body.get("block_id"),
                )
            elif action == "click_home":
                answer = await slack.click_home(
                    user, body["action_id"], block_id=body.get("block_id")
                )
            elif action == "submit":
                answer = await slack.submit_form(user, body["view_id"], body.get("fields") or {})
            elif action == "close":
                answer = await self._close_view(user, body["view_id"])
            elif action == "command":
                command, _, text = str(body["command"]).strip().partition(" ")
                answer = await slack.command(user, command, body.get("text", text).strip())
            elif action == "open_home":
                answer = await slack.open_app_home(user)
            else:
                raise web.HTTPNotFound(text=f"no action {action}")
        except ACTION_ERRORS as e:
            return _refused(f"{type(e).__name__}: {e}")
        return _json({"ok": True, "answer": answer})

    async def _close_view(self, user: str, view_id: str) -> Any:
        """The modal's Cancel: Slack pops the view (and tells the app when it asked to know).
        The stand-in has no helper for it, so the page closes the view itself."""
        stack = self.slack._views.get(user, [])
        index = next((i for i, v in enumerate(stack) if v["id"] == view_id), None)
        if index is None:
            raise LookupError(f"{user} has no open view {view_id}")
        view = stack[index]
        del stack[index:]
        if view.get("notify_on_close"):
            payload = {
                "type": "view_closed",
                **self.slack._common(user),
                "view": view,
                "is_cleared": False,
            }
            return await self.slack.deliver("interactive", payload)
        return None

    # --- the CRM ------------------------------------------------------------------------------
    async def crm_records(self, request: web.Request) -> web.Response:
        hubspot = self.hubspot
        activities: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for activity in hubspot.activities:
            for to_type, to_id, _ in activity.associations:
                activities.setdefault((to_type, to_id), []).append(
                    {
                        "id": activity.id,
                        "kind": activity.object_type[:-1],
                        "subject": activity.properties.get("hs_task_subject"),
                        "body": activity.properties.get("hs_note_body")
                        or activity.properties.get("hs_task_body"),
                        "due": activity.properties.get("hs_timestamp"),
                        "archived": activity.archived,
                        "created_at": activity.created_at,
                    }
                )
        records: dict[str, list[dict[str, Any]]] = {}
        for object_type in OBJECTS:
            records[object_type] = [
                {
                    "id": obj.id,
                    "properties": dict(obj.properties),
                    "updated_at": obj.updated_at,
                    "activities": activities.get((object_type, obj.id), []),
                }
                for obj in sorted(
                    hubspot.objects[object_type].values(), key=lambda o: (len(o.id), o.id)
                )
                if not obj.archived
            ]
        owners = {
            oid: f"{o.get('firstName', '')} {o.get('lastName', '')}".strip() or oid
            for oid, o in hubspot.owners.items()
        }
        return _json({"records": records, "owners": owners})

    async def history(self, request: web.Request) -> web.Response:
        object_type = request.match_info["object"]
        record_id = request.match_info["record_id"]
        return _json(
            {
                "object": object_type,
                "record_id": record_id,
                "proposals": await record_history(self.gate, object_type, record_id),
            }
        )


async def record_history(
    gate: Gate, object_type: str, record_id: str, limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """The newest proposals on one record, each with its changes: tier, status, before-image,
    value written and who decided. Read straight from the ledger's tables."""
    query = (
        select(
            proposals.c.id,
            proposals.c.created_at,
            proposals.c.reason,
            proposals.c.run_id,
            proposals.c.review_state,
            proposals.c.reviewer_id,
            proposals.c.decision,
            proposals.c.decided_by,
            proposals.c.decided_at,
            proposals.c.reject_reason,
            agents.c.name.label("agent"),
        )
        .join(agents, agents.c.id == proposals.c.agent_id)
        .where(proposals.c.object_type == object_type, proposals.c.record_id == record_id)
        .order_by(proposals.c.created_at.desc(), proposals.c.id.desc())
        .limit(limit)
    )
    async with gate.ledger.reader.connect() as conn:
        found = [dict(row) for row in (await conn.execute(query)).mappings()]
        by_id = {p["id"]: p | {"changes": []} for p in found}
        if by_id:
            rows = await conn.execute(
                select(
                    changes.c.id,
                    changes.c.proposal_id,
                    changes.c.kind,
                    changes.c.field,
                    changes.c.tier,
                    changes.c.mode,
                    changes.c.status,
                    changes.c.reason,
                    changes.c.proposed,
                    changes.c.approved,
                    changes.c.before_captured,
                    changes.c.before,
                    changes.c.written,
                    changes.c.error,
                    changes.c.reverts_change_id,
                    changes.c.decided_by,
                    changes.c.decided_at,
                    changes.c.committed_at,
                )
                .where(changes.c.proposal_id.in_(list(by_id)))
                .order_by(changes.c.proposal_id, changes.c.seq)
            )
            for row in rows.mappings():
                change = dict(row)
                if not change.pop("before_captured"):
                    change["before"] = None
                by_id[change["proposal_id"]]["changes"].append(change)
    return [by_id[p["id"]] for p in found]


def sandbox_routes(gate: Gate) -> list[web.RouteDef]:
    """The page and its API. Mount only in sandbox mode (both stand-ins in-process)."""
    page = SandboxPage(gate)

    async def to_page(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/sandbox/")

    return [
        web.get("/sandbox", to_page),
        web.get("/sandbox/", page.index),
        web.get("/sandbox/static/{name}", page.static),
        web.get("/sandbox/api/config", page.config),
        web.get("/sandbox/api/agent-key", page.agent_key),
        web.get("/sandbox/api/slack/{user}", page.slack_state),
        web.post("/sandbox/api/slack/{user}/{action}", page.slack_action),
        web.get("/sandbox/api/crm", page.crm_records),
        web.get("/sandbox/api/crm/{object}/{record_id}/history", page.history),
    ]
