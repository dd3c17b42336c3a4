"""Events: the App Home shows a person's pending reviews and recent decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.ledger.repo import utcnow
from bot.slack import blocks

if TYPE_CHECKING:
    from bot.app import Gate


async def publish_home(gate: Gate, client: AsyncWebClient, user_id: str) -> None:
    pending, recent = await gate.reviews.home(user_id)
    await client.views_publish(user_id=user_id, view=blocks.home_view(user_id, pending, recent, now=utcnow()))


def register(app: AsyncApp, gate: Gate) -> None:
    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab", "home") == "home":
            await publish_home(gate, client, event["user"])
