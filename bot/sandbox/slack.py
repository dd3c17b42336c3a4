"""A stand-in for Slack: the Web API, Socket Mode, response URLs, and the user's side of Slack.

The Web API answers at `POST|GET /api/{method}` as Slack does (HTTP 200 with `ok: false` and an
error code; 429 with Retry-After) and refuses what Slack refuses (bad tokens, unknown channels,
Block Kit over its limits, stale trigger ids). Socket Mode is served at `/socket`, reached through
`apps.connections.open`.

Driving helpers (`click`, `click_home`, `submit_view`, `submit_form`, `command`,
`open_app_home`) act as a Slack user: they build the payloads Slack sends and deliver them to the
app, over the open Socket Mode connection when there is one, else as a signed HTTP POST to
`events_url`. Drive them from the event loop that serves the stand-in (or through the
`/_sandbox/...` JSON endpoints), since Socket Mode acks resolve on that loop.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from bot.sandbox import seed
from bot.sandbox.base import StandIn

JSON = dict[str, Any]
Kind = Literal["interactive", "slash_commands", "events_api"]

MESSAGE_BLOCK_LIMIT = 50
VIEW_BLOCK_LIMIT = 100
VIEW_MAX_BYTES = 250 * 1024
MESSAGE_TEXT_LIMIT = 40_000
KNOWN_BLOCKS = frozenset(
    "section actions context header input image divider rich_text markdown file video table"
    " context_actions call".split()
)
INPUT_VALUE_KEYS = {
    "plain_text_input": "value",
    "number_input": "value",
    "email_text_input": "value",
    "url_text_input": "value",
    "rich_text_input": "rich_text_value",
    "datepicker": "selected_date",
    "timepicker": "selected_time",
    "datetimepicker": "selected_date_time",
    "static_select": "selected_option",
    "external_select": "selected_option",
    "radio_buttons": "selected_option",
    "multi_static_select": "selected_options",
    "multi_external_select": "selected_options",
    "checkboxes": "selected_options",
    "users_select": "selected_user",
    "multi_users_select": "selected_users",
    "conversations_select": "selected_conversation",
    "multi_conversations_select": "selected_conversations",
    "channels_select": "selected_channel",
    "multi_channels_select": "selected_channels",
}
INITIAL_KEYS = {
    "value": "initial_value",
    "selected_date": "initial_date",
    "selected_time": "initial_time",
    "selected_date_time": "initial_date_time",
    "selected_option": "initial_option",
    "selected_options": "initial_options",
    "selected_user": "initial_user",
    "selected_users": "initial_users",
    "selected_conversation": "initial_conversation",
    "selected_conversations": "initial_conversations",
    "selected_channel": "initial_channel",
    "selected_channels": "initial_channels",
}


class SlackError(Exception):
    """A Web API refusal, answered as `{"ok": false, "error": code, ...}`."""

    def __init__(
        self,
        error: str,
        *,
        messages: Sequence[str] = (),
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.messages = list(messages)
        self.status = status
        self.headers = dict(headers or {})

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error": self.error}
        if self.messages:
            body["errors"] = self.messages
            body["response_metadata"] = {"messages": self.messages}
        return body


class AppRejected(Exception):
    """The app answered a delivery with a status other than 200 (401 for a bad signature)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"app answered {status}: {body[:200]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ApiRequest:
    method: str
    args: JSON
    response: JSON


@dataclass(frozen=True)
class ResponsePost:
    """One POST to a response_url, and what the stand-in answered."""

    response_id: str
    user_id: str
    channel: str | None
    body: JSON
    status: int


@dataclass
class _Channel:
    id: str
    name: str
    dm_user: str | None = None  # set for a DM: the only human who can see it


@dataclass
class _Trigger:
    user_id: str
    issued: float
    used: bool = False


@dataclass
class _ResponseUrl:
    user_id: str
    channel: str | None
    message_ts: str | None
    created: float = field(default_factory=time.monotonic)
    uses: int = 0


# --- Block Kit validation ----------------------------------------------------------------------
class _Checker:
    """Collects errors worded as Slack words them in `response_metadata.messages`, e.g.
    `[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]`."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, message: str, ptr: str) -> None:
        self.errors.append(f"[ERROR] {message} [json-pointer:{ptr}]")

    def length(self, value: Any, limit: int, ptr: str) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            self.err("must be a string", ptr)
        elif len(value) > limit:
            self.err(f"must be less than {limit + 1} characters", ptr)

    def text(
        self, obj: Any, limit: int, ptr: str, *, plain: bool = False, required: bool = True
    ) -> None:
        if obj is None:
            if required:
                self.err("missing required field: text", ptr)
            return
        if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
            self.err("must be a text object of type plain_text or mrkdwn", ptr)
            return
        if plain and obj["type"] != "plain_text":
            self.err("must be a plain_text object", f"{ptr}/type")
        text = obj.get("text")
        if not isinstance(text, str) or not text:
            self.err("must be more than 0 characters", f"{ptr}/text")
        else:
            self.length(text, limit, f"{ptr}/text")

    def items(self, value: Any, limit: int, ptr: str, *, minimum: int = 0) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.err("must be an array", ptr)
            return []
        if len(value) > limit:
            self.err(f"no more than {limit} items allowed", ptr)
        elif len(value) < minimum:
            self.err(f"must have at least {minimum} items", ptr)
        return value

    def blocks(self, blocks: Any, limit: int, ptr: str) -> None:
        block_ids: set[str] = set()
        for i, block in enumerate(self.items(blocks, limit, ptr)):
            self.block(block, f"{ptr}/{i}", block_ids)

    def block(self, block: Any, ptr: str, block_ids: set[str]) -> None:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            self.err("missing required field: type", ptr)
            return
        kind = block["type"]
        if kind not in KNOWN_BLOCKS:
            self.err("failed to match all allowed schemas", ptr)
            return
        block_id = block.get("block_id")
        if block_id is not None:
            self.length(block_id, 255, f"{ptr}/block_id")
            if block_id in block_ids:
                self.err(f"duplicate block_id: {block_id}", f"{ptr}/block_id")
            block_ids.add(block_id)
        if kind == "section":
            if block.get("text") is None and block.get("fields") is None:
                self.err("must provide either text or fields", ptr)
            self.text(block.get("text"), 3000, f"{ptr}/text", required=False)
            for j, f in enumerate(self.items(block.get("fields"), 10, f"{ptr}/fields")):
                self.text(f, 2000, f"{ptr}/fields/{j}")
            if block.get("accessory") is not None:
                self.element(block["accessory"], f"{ptr}/accessory")
        elif kind == "actions":
            action_ids: set[str] = set()
            elements = self.items(block.get("elements"), 25, f"{ptr}/elements", minimum=1)
            for j, element in enumerate(elements):
                self.element(element, f"{ptr}/elements/{j}")
                action_id = element.get("action_id") if isinstance(element, dict) else None
                if action_id is not None:
                    if action_id in action_ids:
                        self.err(
                            f"duplicate action_id: {action_id}", f"{ptr}/elements/{j}/action_id"
                        )
                    action_ids.add(action_id)
        elif kind == "context":
            for j, element in enumerate(
                self.items(block.get("elements"), 10, f"{ptr}/elements", minimum=1)
            ):
                if isinstance(element, dict) and element.get("type") in ("plain_text", "mrkdwn"):
                    self.text(element, 3000, f"{ptr}/elements/{j}")
        elif kind == "header":
            self.text(block.get("text"), 150, f"{ptr}/text", plain=True)
        elif kind == "input":
            self.text(block.get("label"), 2000, f"{ptr}/label", plain=True)
            self.text(block.get("hint"), 2000, f"{ptr}/hint", plain=True, required=False)
            if block.get("element") is None:
                self.err("missing required field: element", ptr)
            else:
                self.element(block["element"], f"{ptr}/element")
        elif kind == "image":
            self.length(block.get("image_url"), 3000, f"{ptr}/image_url")
            self.length(block.get("alt_text"), 2000, f"{ptr}/alt_text")
        elif kind == "markdown":
            self.length(block.get("text"), 12000, f"{ptr}/text")

    def element(self, element: Any, ptr: str) -> None:
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            self.err("missing required field: type", ptr)
            return
        kind = element["type"]
        self.length(element.get("action_id"), 255, f"{ptr}/action_id")
        self.text(element.get("placeholder"), 150, f"{ptr}/placeholder", plain=True, required=False)
        if element.get("confirm") is not None:
            self.confirm(element["confirm"], f"{ptr}/confirm")
        if kind == "button":
            self.text(element.get("text"), 75, f"{ptr}/text", plain=True)
            self.length(element.get("value"), 2000, f"{ptr}/value")
            self.length(element.get("url"), 3000, f"{ptr}/url")
            self.length(element.get("accessibility_label"), 75, f"{ptr}/accessibility_label")
            if element.get("style") not in (None, "primary", "danger"):
                self.err("must be one of primary, danger", f"{ptr}/style")
        elif kind in ("static_select", "multi_static_select"):
            for j, option in enumerate(self.items(element.get("options"), 100, f"{ptr}/options")):
                self.option(option, f"{ptr}/options/{j}")
            groups = self.items(element.get("option_groups"), 100, f"{ptr}/option_groups")
            for g, group in enumerate(groups):
                options = group.get("options") if isinstance(group, dict) else None
                for j, option in enumerate(
                    self.items(options, 100, f"{ptr}/option_groups/{g}/options")
                ):
                    self.option(option, f"{ptr}/option_groups/{g}/options/{j}")
        elif kind == "overflow":
            for j, option in enumerate(
                self.items(element.get("options"), 5, f"{ptr}/options", minimum=1)
            ):
                self.option(option, f"{ptr}/options/{j}")
        elif kind in ("checkboxes", "radio_buttons"):
            for j, option in enumerate(
                self.items(element.get("options"), 10, f"{ptr}/options", minimum=1)
            ):
                self.option(option, f"{ptr}/options/{j}")
        elif kind == "plain_text_input":
            self.length(element.get("initial_value"), 3000, f"{ptr}/initial_value")
            for key in ("min_length", "max_length"):
                value = element.get(key)
                if value is not None and (not isinstance(value, int) or not 0 <= value <= 3000):
                    self.err("must be an integer between 0 and 3000", f"{ptr}/{key}")

    def option(self, option: Any, ptr: str) -> None:
        if not isinstance(option, dict):
            self.err("must be an option object", ptr)
            return
        self.text(option.get("text"), 75, f"{ptr}/text")
        self.length(option.get("value"), 150, f"{ptr}/value")
        self.text(option.get("description"), 75, f"{ptr}/description", required=False)

    def confirm(self, confirm: Any, ptr: str) -> None:
        if not isinstance(confirm, dict):
            self.err("must be a confirmation dialog object", ptr)
            return
        self.text(confirm.get("title"), 100, f"{ptr}/title", plain=True)
        self.text(confirm.get("text"), 300, f"{ptr}/text")
        self.text(confirm.get("confirm"), 30, f"{ptr}/confirm", plain=True)
        self.text(confirm.get("deny"), 30, f"{ptr}/deny", plain=True)

    def view(self, view: Any, expected: Literal["modal", "home"]) -> None:
        if not isinstance(view, dict):
            self.err("must be an object", "/view")
            return
        if view.get("type") != expected:
            self.err(f"must be {expected}", "/view/type")
        if expected == "modal":
            self.text(view.get("title"), 24, "/view/title", plain=True)
            self.text(view.get("submit"), 24, "/view/submit", plain=True, required=False)
            self.text(view.get("close"), 24, "/view/close", plain=True, required=False)
            blocks = view.get("blocks")
            has_inputs = isinstance(blocks, list) and any(
                isinstance(b, dict) and b.get("type") == "input" for b in blocks
            )
            if has_inputs and view.get("submit") is None:
                self.err("must provide a submit property when using input blocks", "/view")
        self.length(view.get("private_metadata"), 3000, "/view/private_metadata")
        self.length(view.get("callback_id"), 255, "/view/callback_id")
        self.length(view.get("external_id"), 255, "/view/external_id")
        if view.get("blocks") is None:
            self.err("missing required field: blocks", "/view")
        self.blocks(view.get("blocks"), VIEW_BLOCK_LIMIT, "/view/blocks")


def _short_id() -> str:
    return secrets.token_urlsafe(3)


def _interactive_elements(blocks: Sequence[JSON]) -> Iterator[tuple[JSON, JSON]]:
    """(block, element) for every element a user can act on."""
    for block in blocks:
        if block.get("type") == "actions":
            for element in block.get("elements", []):
                yield block, element
        elif block.get("type") == "section" and isinstance(block.get("accessory"), dict):
            yield block, block["accessory"]
        elif block.get("type") == "input" and isinstance(block.get("element"), dict):
            yield block, block["element"]


def _fill_ids(blocks: list[JSON]) -> list[JSON]:
    """Slack generates a block_id and action_id wherever the app left them out."""
    for block in blocks:
        block.setdefault("block_id", _short_id())
    for _, element in _interactive_elements(blocks):
        element.setdefault("action_id", _short_id())
    return blocks


def _options(element: JSON) -> list[JSON]:
    options = list(element.get("options") or [])
    for group in element.get("option_groups") or []:
        options.extend(group.get("options") or [])
    return options


def _text_of(obj: Any) -> str:
    return obj.get("text", "") if isinstance(obj, dict) else ""


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


# --- the stand-in -------------------------------------------------------------------------------
class SlackStandIn(StandIn):
    name = "slack"

    def __init__(
        self,
        bot_token: str = "xoxb-sandbox",
        *,
        signing_secret: str = "sandbox-signing-secret",
        app_token: str = "xapp-sandbox",
        events_url: str | None = None,
        team_id: str = "T0SANDBOX",
        bot_user_id: str = "U0BOT",
        usergroups: Mapping[str, Sequence[str]] | None = None,
        message_rate: float | None = 1.0,
        message_burst: int = 5,
    ) -> None:
        self.bot_token = bot_token
        self.signing_secret = signing_secret
        self.app_token = app_token
        self.events_url = events_url
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = "B0SANDBOX"
        self.app_id = "A0SANDBOX"
        self.verification_token = "sandbox-verification-token"
        # chat.postMessage per channel: `message_rate` per second with bursts of `message_burst`;
        # set message_rate to None to lift the limit.
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.trigger_ttl = 3.0
        self.ack_timeout = 3.0
        self.usergroups: dict[str, list[str]] = {
            k: list(v) for k, v in (usergroups or {"S0OPS": [seed.OPS_USER.slack_id]}).items()
        }
        self._people = {p.slack_id: p for p in seed.SLACK_USERS}
        self._channels: dict[str, _Channel] = {
            seed.ALERTS_CHANNEL: _Channel(seed.ALERTS_CHANNEL, seed.ALERTS_CHANNEL_NAME),
            seed.FALLBACK_CHANNEL: _Channel(seed.FALLBACK_CHANNEL, seed.FALLBACK_CHANNEL_NAME),
        }
        self._messages: dict[str, list[JSON]] = {}
        self._edits: dict[tuple[str, str], list[JSON]] = {}
        self._ephemerals: dict[str, list[JSON]] = {}
        self._views: dict[str, list[JSON]] = {}
        self._homes: dict[str, JSON] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._responses: list[ResponsePost] = []
        self._requests: list[ApiRequest] = []
        self._buckets: dict[str, tuple[float, float]] = {}
        self._last_us = 0
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[JSON]] = {}
        self.acks: list[JSON] = []  # every Socket Mode ack received
        self._session: aiohttp.ClientSession | None = None
        self._methods: dict[str, Callable[[JSON], JSON]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "conversations.open": self._conversations_open,
            "users.lookupByEmail": self._users_lookup_by_email,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "usergroups.users.list": self._usergroups_users_list,
            "apps.connections.open": self._apps_connections_open,
        }
        super().__init__(token=bot_token)

    # --- base-class hooks ----------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/_sandbox/response/{id}", self._response_url)
        app.router.add_get("/_sandbox/state", self._sandbox_state)
        app.router.add_post("/_sandbox/{action}", self._sandbox_action)
        app.on_shutdown.append(self._close_sockets)

    def error_response(self, status: int, message: str, code: str) -> web.Response:
        return web.json_response({"ok": False, "error": code}, status=status)

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        if header is None:
            return True  # the token may be a form/JSON field: each method checks it
        return header.removeprefix("Bearer ").strip() in (self.bot_token, self.app_token)

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.error_response(200, "Invalid token.", "invalid_auth")

    def rate_limited_response(self, retry_after: float) -> web.Response:
        resp = self.error_response(429, "Rate limited.", "ratelimited")
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return resp

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # --- accessors ------------------------------------------------------------------------------
    def messages(self, channel: str) -> list[JSON]:
        return copy.deepcopy(self._messages.get(channel, []))

    def last_message(self, channel: str) -> JSON | None:
        messages = self._messages.get(channel)
        return copy.deepcopy(messages[-1]) if messages else None

    def message(self, channel: str, ts: str) -> JSON | None:
        found = self._find_message(channel, ts)
        return copy.deepcopy(found) if found else None

    def edits(self, channel: str, ts: str) -> list[JSON]:
        """Earlier versions of a message, oldest first."""
        return copy.deepcopy(self._edits.get((channel, ts), []))

    def dm_channel(self, user_id: str) -> str:
        """The id of the user's DM with the app (stable; opened or not)."""
        return "D" + user_id[1:]

    def ephemerals(self, user_id: str) -> list[JSON]:
        return copy.deepcopy(self._ephemerals.get(user_id, []))

    @property
    def responses(self) -> list[ResponsePost]:
        return list(self._responses)

    def views(self, user_id: str) -> list[JSON]:
        """The user's open modal stack, root first."""
        return copy.deepcopy(self._views.get(user_id, []))

    def home(self, user_id: str) -> JSON | None:
        home = self._homes.get(user_id)
        return copy.deepcopy(home) if home else None

    def api_calls(self, method: str) -> int:
        return sum(1 for c in self.calls if c.path == f"/api/{method}")

    def api_requests(self, method: str) -> list[JSON]:
        """Arguments of every handled call to `method` (token removed), oldest first."""
        return [copy.deepcopy(r.args) for r in self._requests if r.method == method]

    @property
    def socket_connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets)

    # --- Web API -------------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: JSON = {}
        try:
            args = await self._read_args(request)
            token = args.pop("token", None)
            header = request.headers.get("Authorization")
            if header is not None:
                token = header.removeprefix("Bearer ").strip()
            handler = self._methods.get(method)
            if handler is None:
                raise SlackError("unknown_method")
            self._check_token(method, token)
            body: JSON = {"ok": True, **handler(args)}
            response = web.json_response(body)
        except SlackError as e:
            body = e.body()
            response = web.json_response(body, status=e.status, headers=e.headers)
        self._requests.append(ApiRequest(method, args, body))
        return response

    @staticmethod
    async def _read_args(request: web.Request) -> JSON:
        args: JSON = dict(request.query)
        if request.method != "POST" or not request.can_read_body:
            return args
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise SlackError("invalid_json") from None
            if not isinstance(body, dict):
                raise SlackError("invalid_json")
            args.update(body)
        else:
            form = await request.post()
            args.update({k: v for k, v in form.items() if isinstance(v, str)})
        return args

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise SlackError("not_authed")
        wanted, other = (
            (self.app_token, self.bot_token)
            if method == "apps.connections.open"
            else (self.bot_token, self.app_token)
        )
        if token == other:
            raise SlackError("not_allowed_token_type")
        if token != wanted:
            raise SlackError("invalid_auth")

    @staticmethod
    def _required(args: JSON, name: str, error: str = "invalid_arguments") -> str:
        value = args.get(name)
        if value is None or value == "":
            messages = (
                [f"[ERROR] missing required field: {name}"] if error == "invalid_arguments" else []
            )
            raise SlackError(error, messages=messages)
        return str(value)

    @staticmethod
    def _json_arg(args: JSON, name: str, error: str) -> Any:
        value = args.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise SlackError(error) from None
        return value

    def _auth_test(self, args: JSON) -> JSON:
        return {
            "url": "https://sandbox.slack.com/",
            "team": "Sandbox",
            "user": "crm-gate",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: JSON) -> JSON:
        channel = self._resolve_channel(self._required(args, "channel", "channel_not_found"))
        self._take_message_slot(channel)
        text, blocks = self._content(args, MESSAGE_BLOCK_LIMIT)
        message: JSON = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": text,
            "ts": self._next_ts(),
        }
        if blocks is not None:
            message["blocks"] = blocks
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        for key, error in (
            ("metadata", "invalid_metadata_format"),
            ("attachments", "invalid_attachments"),
        ):
            if args.get(key) is not None:
                message[key] = self._json_arg(args, key, error)
        self._messages.setdefault(channel, []).append(message)
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_update(self, args: JSON) -> JSON:
        channel = self._resolve_channel(self._required(args, "channel", "channel_not_found"))
        message = self._find_message(channel, str(args.get("ts", "")))
        if message is None:
            raise SlackError("message_not_found")
        text, blocks = self._content(args, MESSAGE_BLOCK_LIMIT)
        self._edit(channel, message, text, blocks)
        return {
            "channel": channel,
            "ts": message["ts"],
            "text": message["text"],
            "message": copy.deepcopy(message),
        }

    def _chat_post_ephemeral(self, args: JSON) -> JSON:
        channel = self._resolve_channel(self._required(args, "channel", "channel_not_found"))
        user_id = self._required(args, "user", "user_not_found")
        self._person(user_id, error="user_not_found")
        dm_user = self._channels[channel].dm_user
        if dm_user is not None and dm_user != user_id:
            raise SlackError("user_not_in_channel")
        text, blocks = self._content(args, MESSAGE_BLOCK_LIMIT)
        ts = self._next_ts()
        self._ephemerals.setdefault(user_id, []).append(
            {"channel": channel, "user": user_id, "ts": ts, "text": text, "blocks": blocks or []}
        )
        return {"message_ts": ts}

    def _conversations_open(self, args: JSON) -> JSON:
        if args.get("channel"):
            return {"channel": {"id": self._resolve_channel(str(args["channel"]))}}
        users = [u.strip() for u in str(args.get("users", "")).split(",") if u.strip()]
        if not users:
            raise SlackError("users_list_not_supplied")
        if len(users) > 1:
            raise SlackError(
                "invalid_arguments", messages=["[ERROR] the sandbox opens one-to-one DMs only"]
            )
        self._person(users[0], error="user_not_found")
        already = self.dm_channel(users[0]) in self._channels
        channel: JSON = {"id": self._open_dm(users[0])}
        if _truthy(args.get("return_im")):
            channel |= {"is_im": True, "user": users[0], "created": int(time.time())}
        return {"no_op": already, "already_open": already, "channel": channel}

    def _users_lookup_by_email(self, args: JSON) -> JSON:
        email = self._required(args, "email").lower()
        for person in self._people.values():
            if person.email.lower() == email:
                return {"user": self._user_object(person.slack_id)}
        raise SlackError("users_not_found")

    def _users_info(self, args: JSON) -> JSON:
        user_id = self._required(args, "user", "user_not_found")
        if user_id != self.bot_user_id:
            self._person(user_id, error="user_not_found")
        return {"user": self._user_object(user_id)}

    def _views_open(self, args: JSON) -> JSON:
        trigger = self._exchange_trigger(args)
        view = self._checked_view(args, "modal")
        trigger.used = True
        opened = self._materialize(view)
        self._views[trigger.user_id] = [opened]
        return {"view": copy.deepcopy(opened)}

    def _views_push(self, args: JSON) -> JSON:
        trigger = self._exchange_trigger(args)
        view = self._checked_view(args, "modal")
        stack = self._views.get(trigger.user_id) or []
        if not stack:
            raise SlackError("not_found")
        if len(stack) >= 3:
            raise SlackError("push_limit_reached")
        trigger.used = True
        pushed = self._materialize(view, root=stack[0]["id"], previous=stack[-1]["id"])
        stack.append(pushed)
        return {"view": copy.deepcopy(pushed)}

    def _views_update(self, args: JSON) -> JSON:
        view_id, external_id = args.get("view_id"), args.get("external_id")
        if not view_id and not external_id:
            raise SlackError(
                "invalid_arguments", messages=["[ERROR] view_id or external_id is required"]
            )
        # modal stacks and App Home views alike, each as (holder, key) so it can be replaced
        slots: list[tuple[Any, Any]] = [(s, i) for s in self._views.values() for i in range(len(s))]
        slots += [(self._homes, user_id) for user_id in self._homes]
        for holder, key in slots:
            current = holder[key]
            if current["id"] == view_id or (external_id and current["external_id"] == external_id):
                self._check_hash(args, current)
                view = self._checked_view(args, current["type"])
                view.setdefault("external_id", current["external_id"])
                holder[key] = self._materialize(
                    view,
                    view_id=current["id"],
                    root=current["root_view_id"],
                    previous=current["previous_view_id"],
                )
                return {"view": copy.deepcopy(holder[key])}
        raise SlackError("not_found")

    def _views_publish(self, args: JSON) -> JSON:
        user_id = self._required(args, "user_id")
        self._person(user_id, error="user_not_found")
        view = self._checked_view(args, "home")
        current = self._homes.get(user_id)
        if current is not None:
            self._check_hash(args, current)
        published = self._materialize(view, view_id=current["id"] if current else None)
        self._homes[user_id] = published
        return {"view": copy.deepcopy(published)}

    def _usergroups_users_list(self, args: JSON) -> JSON:
        group = self._required(args, "usergroup")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _apps_connections_open(self, args: JSON) -> JSON:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}&app_id={self.app_id}"}

    # --- Web API helpers -----------------------------------------------------------------------
    def _person(self, user_id: str, *, error: str = "user_not_found") -> seed.Person:
        person = self._people.get(user_id)
        if person is None:
            raise SlackError(error)
        return person

    def _user_object(self, user_id: str) -> JSON:
        if user_id == self.bot_user_id:
            return {
                "id": user_id,
                "team_id": self.team_id,
                "name": "crm-gate",
                "deleted": False,
                "real_name": "CRM Gate",
                "is_bot": True,
                "profile": {
                    "real_name": "CRM Gate",
                    "bot_id": self.bot_id,
                    "api_app_id": self.app_id,
                },
            }
        person = self._people[user_id]
        username = person.email.split("@")[0]
        return {
            "id": user_id,
            "team_id": self.team_id,
            "name": username,
            "deleted": False,
            "real_name": person.name,
            "tz": "America/New_York",
            "tz_label": "Eastern Standard Time",
            "tz_offset": -18000,
            "is_bot": False,
            "is_admin": False,
            "profile": {
                "email": person.email,
                "real_name": person.name,
                "real_name_normalized": person.name,
                "display_name": person.first,
                "display_name_normalized": person.first,
                "first_name": person.first,
                "last_name": person.last,
            },
        }

    def _open_dm(self, user_id: str) -> str:
        channel = self.dm_channel(user_id)
        self._channels.setdefault(channel, _Channel(channel, "directmessage", dm_user=user_id))
        return channel

    def _resolve_channel(self, value: str) -> str:
        if value in self._channels:
            return value
        if value in self._people:  # posting to a user id posts to the app's DM with them
            return self._open_dm(value)
        name = value.removeprefix("#")
        for channel in self._channels.values():
            if channel.dm_user is None and channel.name == name:
                return channel.id
        raise SlackError("channel_not_found")

    def _take_message_slot(self, channel: str) -> None:
        if self.message_rate is None:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(channel, (float(self.message_burst), now))
        tokens = min(float(self.message_burst), tokens + (now - last) * self.message_rate)
        if tokens < 1:
            self._buckets[channel] = (tokens, now)
            self.rate_limited += 1
            wait = (1 - tokens) / self.message_rate
            raise SlackError(
                "ratelimited", status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))}
            )
        self._buckets[channel] = (tokens - 1, now)

    def _content(self, args: JSON, limit: int) -> tuple[str | None, list[JSON] | None]:
        """(text, blocks) of a message after Slack's checks; blocks None when not given."""
        blocks = self._json_arg(args, "blocks", "invalid_blocks_format")
        if blocks is not None and not isinstance(blocks, list):
            raise SlackError("invalid_blocks_format")
        text = args.get("text")
        if not text and not blocks and not args.get("attachments"):
            raise SlackError("no_text")
        checker = _Checker()
        checker.blocks(blocks, limit, "/blocks")
        if checker.errors:
            raise SlackError("invalid_blocks", messages=checker.errors)
        if isinstance(text, str):
            text = text[:MESSAGE_TEXT_LIMIT]
        return text, _fill_ids(copy.deepcopy(blocks)) if blocks is not None else None

    def _edit(
        self, channel: str, message: JSON, text: str | None, blocks: list[JSON] | None
    ) -> None:
        self._edits.setdefault((channel, message["ts"]), []).append(copy.deepcopy(message))
        if text is not None:
            message["text"] = text
        if blocks is not None:  # Slack keeps the old blocks when an update leaves them out
            message["blocks"] = blocks
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}

    def _find_message(self, channel: str, ts: str) -> JSON | None:
        return next((m for m in self._messages.get(channel, []) if m["ts"] == ts), None)

    def _next_ts(self) -> str:
        us = max(int(time.time() * 1_000_000), self._last_us + 1)
        self._last_us = us
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def _exchange_trigger(self, args: JSON) -> _Trigger:
        trigger = self._triggers.get(self._required(args, "trigger_id"))
        if trigger is None:
            raise SlackError("invalid_trigger_id")
        if trigger.used:
            raise SlackError("exchanged_trigger_id")
        if time.monotonic() - trigger.issued > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        return trigger

    def _checked_view(self, args: JSON, expected: Literal["modal", "home"]) -> JSON:
        if args.get("view") is None:
            raise SlackError("invalid_arguments", messages=["[ERROR] missing required field: view"])
        view = self._json_arg(args, "view", "invalid_arguments")
        if len(json.dumps(view)) > VIEW_MAX_BYTES:
            raise SlackError("view_too_large")
        checker = _Checker()
        checker.view(view, expected)
        if checker.errors:
            raise SlackError("invalid_arguments", messages=checker.errors)
        return copy.deepcopy(view)

    @staticmethod
    def _check_hash(args: JSON, current: JSON) -> None:
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackError("hash_conflict")

    def _materialize(
        self,
        view: JSON,
        *,
        view_id: str | None = None,
        root: str | None = None,
        previous: str | None = None,
    ) -> JSON:
        view_id = view_id or "V" + secrets.token_hex(5).upper()
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": _fill_ids(view.get("blocks", [])),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "previous_view_id": previous,
            "root_view_id": root or view_id,
            "app_id": self.app_id,
            "external_id": view.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }

    # --- response_url ---------------------------------------------------------------------------
    def _new_response_url(self, user_id: str, channel: str | None, message_ts: str | None) -> str:
        response_id = uuid.uuid4().hex
        self._response_urls[response_id] = _ResponseUrl(user_id, channel, message_ts)
        return f"{self.url}/_sandbox/response/{response_id}"

    async def _response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        target = self._response_urls.get(response_id)
        if target is None or time.monotonic() - target.created > 1800:
            status, answer = 404, "expired_url"
        elif target.uses >= 5:  # Slack allows five responses within 30 minutes
            status, answer = 404, "used_url"
        else:
            target.uses += 1
            status, answer = self._apply_response(target, body if isinstance(body, dict) else {})
        self._responses.append(
            ResponsePost(
                response_id,
                target.user_id if target else "",
                target.channel if target else None,
                body,
                status,
            )
        )
        if status == 200:
            return web.json_response({"ok": True})
        return web.Response(status=status, text=answer)

    def _apply_response(self, target: _ResponseUrl, body: JSON) -> tuple[int, str]:
        """What Slack does with a response_url post (or an immediate slash command answer)."""
        channel = target.channel
        original = (
            self._find_message(channel, target.message_ts)
            if channel and target.message_ts
            else None
        )
        if original is None and channel and target.message_ts:
            # Slack also replaces (or deletes) an ephemeral message that was interacted with.
            original = next(
                (
                    e
                    for e in self._ephemerals.get(target.user_id, [])
                    if e["channel"] == channel and e["ts"] == target.message_ts
                ),
                None,
            )
            if original is not None and _truthy(body.get("delete_original")):
                self._ephemerals[target.user_id].remove(original)
                return 200, "ok"
        if _truthy(body.get("delete_original")):
            if original is None or channel is None:
                return 404, "message_not_found"
            self._messages[channel].remove(original)
            return 200, "ok"
        try:
            text, blocks = self._content(body, MESSAGE_BLOCK_LIMIT)
        except SlackError as e:
            return 400, e.error
        if _truthy(body.get("replace_original")):
            if original is None or channel is None:
                return 404, "message_not_found"
            self._edit(channel, original, text, blocks)
        elif body.get("response_type") == "in_channel" and channel is not None:
            message: JSON = {
                "type": "message",
                "user": self.bot_user_id,
                "bot_id": self.bot_id,
                "app_id": self.app_id,
                "team": self.team_id,
                "text": text,
                "ts": self._next_ts(),
                "blocks": blocks or [],
            }
            self._messages.setdefault(channel, []).append(message)
        else:
            self._ephemerals.setdefault(target.user_id, []).append(
                {
                    "channel": channel,
                    "user": target.user_id,
                    "ts": self._next_ts(),
                    "text": text,
                    "blocks": blocks or [],
                }
            )
        return 200, "ok"

    # --- Socket Mode ---------------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets),
                "debug_info": {
                    "host": "sandbox-applink",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    ack = json.loads(msg.data)
                except ValueError:
                    continue
                envelope_id = ack.get("envelope_id") if isinstance(ack, dict) else None
                waiter = self._acks.get(envelope_id) if isinstance(envelope_id, str) else None
                if waiter is not None and not waiter.done():
                    self.acks.append(ack)
                    waiter.set_result(ack)
        finally:
            self._sockets.remove(ws)
        return ws

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def _deliver_socket(self, ws: web.WebSocketResponse, kind: Kind, payload: JSON) -> Any:
        envelope_id = str(uuid.uuid4())
        envelope: JSON = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind == "slash_commands"
            or payload.get("type") in ("view_submission", "block_suggestion"),
        }
        if kind == "events_api":
            envelope |= {"retry_attempt": 0, "retry_reason": ""}
        waiter: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = waiter
        try:
            await ws.send_json(envelope)
            ack = await asyncio.wait_for(waiter, self.ack_timeout)
        except TimeoutError:
            raise TimeoutError(f"the app did not ack {kind} within {self.ack_timeout}s") from None
        finally:
            self._acks.pop(envelope_id, None)
        return ack.get("payload")

    # --- delivery to the app -------------------------------------------------------------------
    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Slack's request signature headers for `body`."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(
            self.signing_secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256
        ).hexdigest()
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}

    async def deliver(
        self,
        kind: Kind,
        payload: JSON,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Send a payload as Slack would; returns the app's answer (JSON, text or None).

        `timestamp` and `signature` override the signed headers (HTTP mode only), to test
        stale or forged requests.
        """
        sockets = [ws for ws in self._sockets if not ws.closed]
        if sockets:
            return await self._deliver_socket(sockets[-1], kind, payload)
        if self.events_url is None:
            raise RuntimeError("no Socket Mode connection and no events_url to deliver to")
        if kind == "events_api":
            body, content_type = json.dumps(payload).encode(), "application/json"
        else:
            form = {"payload": json.dumps(payload)} if kind == "interactive" else payload
            body, content_type = urlencode(form).encode(), "application/x-www-form-urlencoded"
        headers = self.sign(body, timestamp) | {"Content-Type": content_type}
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            self.events_url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.ack_timeout),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise AppRejected(resp.status, text)
            if not text:
                return None
            return json.loads(text) if resp.content_type == "application/json" else text

    def issue_trigger(self, user_id: str, *, issued_ago: float = 0.0) -> str:
        """A trigger_id as Slack attaches to an interaction; `issued_ago` backdates it."""
        trigger_id = (
            f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        )
        self._triggers[trigger_id] = _Trigger(user_id, time.monotonic() - issued_ago)
        return trigger_id

    def _actor(self, user_id: str) -> JSON:
        person = self._people.get(user_id)
        if person is None:
            raise LookupError(f"no Slack user {user_id}")
        username = person.email.split("@")[0]
        return {"id": user_id, "username": username, "name": username, "team_id": self.team_id}

    def _common(self, user_id: str) -> JSON:
        return {
            "user": self._actor(user_id),
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "trigger_id": self.issue_trigger(user_id),
            "team": {"id": self.team_id, "domain": "sandbox"},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    @staticmethod
    def _button(blocks: Sequence[JSON], action_id: str, block_id: str | None) -> tuple[JSON, JSON]:
        found = [
            (block, element)
            for block, element in _interactive_elements(blocks)
            if element.get("type") == "button"
            and element.get("action_id") == action_id
            and (block_id is None or block.get("block_id") == block_id)
        ]
        if not found:
            raise LookupError(f"no button {action_id!r} (block {block_id!r}) to click")
        if len(found) > 1:
            raise LookupError(f"{len(found)} buttons {action_id!r}: pass block_id")
        return found[0]

    @staticmethod
    def _action(block: JSON, button: JSON) -> JSON:
        action = {
            "action_id": button["action_id"],
            "block_id": block["block_id"],
            "text": button.get("text"),
            "type": "button",
            "action_ts": f"{time.time():.6f}",
        }
        for key in ("value", "style", "url"):
            if key in button:
                action[key] = button[key]
        return action

    async def click(
        self,
        user_id: str,
        channel: str,
        ts: str,
        action_id: str,
        *,
        block_id: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Click a button in a message (or in one of the user's ephemerals); returns the ack body."""
        common = self._common(user_id)
        dm_user = self._channels[channel].dm_user if channel in self._channels else None
        if dm_user is not None and dm_user != user_id:
            raise PermissionError(f"{user_id} cannot see {dm_user}'s DM {channel}")
        message = self._find_message(channel, ts)
        ephemeral = message is None
        if message is None:
            message = next(
                (
                    e
                    for e in self._ephemerals.get(user_id, [])
                    if e["channel"] == channel and e["ts"] == ts
                ),
                None,
            )
        if message is None:
            raise LookupError(f"no message {ts} in {channel} visible to {user_id}")
        block, button = self._button(message.get("blocks") or [], action_id, block_id)
        payload: JSON = {
            "type": "block_actions",
            **common,
            "container": {
                "type": "message",
                "message_ts": ts,
                "channel_id": channel,
                "is_ephemeral": ephemeral,
            },
            "channel": {"id": channel, "name": self._channels[channel].name},
            "state": {"values": {}},
            "response_url": self._new_response_url(user_id, channel, ts),
            "actions": [self._action(block, button)],
        }
        if not ephemeral:
            payload["message"] = copy.deepcopy(message)
        return await self.deliver("interactive", payload, timestamp=timestamp, signature=signature)

    async def click_home(
        self,
        user_id: str,
        action_id: str,
        *,
        block_id: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Click a button in the user's App Home; returns the ack body."""
        common = self._common(user_id)
        home = self._homes.get(user_id)
        if home is None:
            raise LookupError(f"{user_id} has no App Home view")
        block, button = self._button(home["blocks"], action_id, block_id)
        payload: JSON = {
            "type": "block_actions",
            **common,
            "container": {"type": "view", "view_id": home["id"]},
            "view": copy.deepcopy(home),
            "actions": [self._action(block, button)],
        }
        return await self.deliver("interactive", payload, timestamp=timestamp, signature=signature)

    def _open_view(self, user_id: str, view_id: str) -> tuple[list[JSON], int]:
        stack = self._views.get(user_id, [])
        for i, view in enumerate(stack):
            if view["id"] == view_id:
                return stack, i
        raise LookupError(f"{user_id} has no open view {view_id}")

    async def submit_view(
        self,
        user_id: str,
        view_id: str,
        values: Mapping[str, Mapping[str, JSON]] | None = None,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Submit an open modal with `values[block_id][action_id] = {"type": ..., ...}` (Slack's
        state shape); inputs left out keep their initial value. Returns the app's answer and
        applies its `response_action` (none closes the view, errors keeps it, update/push/clear)."""
        stack, index = self._open_view(user_id, view_id)
        view = stack[index]
        state: dict[str, dict[str, JSON]] = {}
        for block in view["blocks"]:
            element = block.get("element") if block.get("type") == "input" else None
            if not isinstance(element, dict) or element.get("type") not in INPUT_VALUE_KEYS:
                continue
            key = INPUT_VALUE_KEYS[element["type"]]
            default = element.get(INITIAL_KEYS.get(key, ""))
            if default is None and key.endswith("s") and key.startswith("selected_"):
                default = []
            given = (values or {}).get(block["block_id"], {}).get(element["action_id"])
            entry = dict(given) if given is not None else {"type": element["type"], key: default}
            if not block.get("optional") and entry.get(key) in (None, "", []):
                raise ValueError(f"input {block['block_id']} is required: Slack would not submit")
            state[block["block_id"]] = {element["action_id"]: entry}
        common = self._common(user_id)
        payload: JSON = {
            "type": "view_submission",
            **common,
            "view": copy.deepcopy(view) | {"state": {"values": state}},
            "response_urls": [],
        }
        answer = await self.deliver(
            "interactive", payload, timestamp=timestamp, signature=signature
        )
        action = answer.get("response_action") if isinstance(answer, dict) else None
        if action in ("update", "push"):
            checker = _Checker()
            checker.view(answer.get("view"), "modal")
            if checker.errors:  # Slack shows the user an error and keeps the modal as it was
                raise ValueError(f"response_action {action} with an invalid view: {checker.errors}")
            new = copy.deepcopy(answer["view"])
            if action == "update":
                stack[index] = self._materialize(
                    new,
                    view_id=view_id,
                    root=view["root_view_id"],
                    previous=view["previous_view_id"],
                )
            else:
                stack.append(self._materialize(new, root=stack[0]["id"], previous=stack[-1]["id"]))
        elif action == "clear":
            stack.clear()
        elif action is None:
            del stack[index:]
        return answer

    async def submit_form(
        self,
        user_id: str,
        view_id: str,
        fields: Mapping[str, str | Sequence[str] | None],
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """`submit_view` from plain values keyed by block_id (or action_id): option values or
        texts for selects, "YYYY-MM-DD" for date pickers, strings for text and number inputs."""
        stack, index = self._open_view(user_id, view_id)
        values: dict[str, dict[str, JSON]] = {}
        remaining = dict(fields)
        for block in stack[index]["blocks"]:
            element = block.get("element") if block.get("type") == "input" else None
            if not isinstance(element, dict):
                continue
            for key in (block["block_id"], element["action_id"]):
                if key in remaining:
                    value = remaining.pop(key)
                    values[block["block_id"]] = {element["action_id"]: self._value(element, value)}
                    break
        if remaining:
            raise LookupError(f"no input blocks {sorted(remaining)} in view {view_id}")
        return await self.submit_view(
            user_id, view_id, values, timestamp=timestamp, signature=signature
        )

    @staticmethod
    def _value(element: JSON, value: str | Sequence[str] | None) -> JSON:
        kind = element["type"]
        key = INPUT_VALUE_KEYS.get(kind)
        if key is None:
            raise LookupError(f"cannot fill a {kind} element")
        if key in ("selected_option", "selected_options"):
            wanted = [value] if isinstance(value, str) else list(value or [])
            chosen: list[JSON] = []
            for item in wanted:
                option = next(
                    (
                        o
                        for o in _options(element)
                        if item in (o.get("value"), _text_of(o.get("text")))
                    ),
                    None,
                )
                if option is None:
                    raise LookupError(f"no option {item!r} in {element['action_id']}")
                chosen.append(option)
            return {
                "type": kind,
                key: chosen if key == "selected_options" else (chosen[0] if chosen else None),
            }
        if isinstance(value, Sequence) and not isinstance(value, str) and not key.endswith("s"):
            raise ValueError(f"{element['action_id']} takes one value")
        return {
            "type": kind,
            key: value if value is None or isinstance(value, str) else list(value),
        }

    async def command(
        self,
        user_id: str,
        command: str,
        text: str = "",
        *,
        channel_id: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Run a slash command (in the user's DM with the app unless `channel_id` is given);
        returns the app's answer, whose text/blocks Slack shows like a response_url post."""
        if not command.startswith("/"):
            raise ValueError("slash commands start with '/'")
        actor = self._actor(user_id)
        channel = channel_id or self._open_dm(user_id)
        if channel not in self._channels:
            raise LookupError(f"no channel {channel}")
        response_url = self._new_response_url(user_id, channel, None)
        fields = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": "sandbox",
            "channel_id": channel,
            "channel_name": self._channels[channel].name,
            "user_id": user_id,
            "user_name": actor["username"],
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": self.issue_trigger(user_id),
        }
        answer = await self.deliver(
            "slash_commands", fields, timestamp=timestamp, signature=signature
        )
        if isinstance(answer, str):
            answer_body: JSON = {"text": answer}
        else:
            answer_body = answer if isinstance(answer, dict) else {}
        if answer_body.get("text") or answer_body.get("blocks"):
            self._apply_response(self._response_urls[response_url.rsplit("/", 1)[1]], answer_body)
        return answer

    async def open_app_home(
        self,
        user_id: str,
        *,
        tab: str = "home",
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Send the `app_home_opened` event Slack sends when the user opens the app's Home tab."""
        self._actor(user_id)
        event: JSON = {
            "type": "app_home_opened",
            "user": user_id,
            "channel": self._open_dm(user_id),
            "tab": tab,
            "event_ts": f"{time.time():.6f}",
        }
        if user_id in self._homes:
            event["view"] = copy.deepcopy(self._homes[user_id])
        payload: JSON = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(5).upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        return await self.deliver("events_api", payload, timestamp=timestamp, signature=signature)

    # --- /_sandbox JSON endpoints (for the sandbox page) ----------------------------------------
    async def _sandbox_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "users": [self._user_object(uid) for uid in self._people],
                "channels": [
                    {"id": c.id, "name": c.name, "dm_user": c.dm_user}
                    for c in self._channels.values()
                ],
                "messages": self._messages,
                "ephemerals": self._ephemerals,
                "views": self._views,
                "homes": self._homes,
                "responses": [r.__dict__ for r in self._responses],
                "socket_connected": self.socket_connected,
            }
        )

    async def _sandbox_action(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            action = request.match_info["action"]
            if action == "click":
                answer = await self.click(
                    body["user_id"],
                    body["channel"],
                    body["ts"],
                    body["action_id"],
                    block_id=body.get("block_id"),
                )
            elif action == "click_home":
                answer = await self.click_home(
                    body["user_id"], body["action_id"], block_id=body.get("block_id")
                )
            elif action == "submit":
                if "fields" in body:
                    answer = await self.submit_form(
                        body["user_id"], body["view_id"], body["fields"]
                    )
                else:
                    answer = await self.submit_view(
                        body["user_id"], body["view_id"], body.get("values")
                    )
            elif action == "command":
                answer = await self.command(
                    body["user_id"],
                    body["command"],
                    body.get("text", ""),
                    channel_id=body.get("channel_id"),
                )
            elif action == "app_home":
                answer = await self.open_app_home(body["user_id"])
            else:
                raise web.HTTPNotFound()
        except (
            KeyError,
            LookupError,
            PermissionError,
            ValueError,
            TimeoutError,
            RuntimeError,
            AppRejected,
        ) as e:
            return web.json_response({"ok": False, "error": f"{type(e).__name__}: {e}"}, status=400)
        return web.json_response({"ok": True, "answer": answer})
