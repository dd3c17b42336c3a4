"""The Slack face: a Bolt AsyncApp on the gate's own aiohttp server (HTTP mode, at
/slack/events, signatures checked) or over Socket Mode when SLACK_APP_TOKEN is set.

Listeners live by surface (actions, views, events, commands); each acks at once and then calls
one engine use-case. Slack work never touches the ledger directly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import actions, commands, events, views

if TYPE_CHECKING:
    from bot.app import Gate

log = logging.getLogger(__name__)


def build_bolt_app(gate: Gate, client: AsyncWebClient, signing_secret: str | None) -> AsyncApp:
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
        process_before_response=False,
    )
    actions.register(app, gate)
    views.register(app, gate)
    events.register(app, gate)
    commands.register(app, gate)
    return app


def events_route(bolt: AsyncApp) -> web.RouteDef:
    async def slack_events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    return web.post("/slack/events", slack_events)


async def start_socket_mode(bolt: AsyncApp, app_token: str) -> object:
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(bolt, app_token)
    await handler.connect_async()
    log.info("connected to Slack over Socket Mode")
    return handler
