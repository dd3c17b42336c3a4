"""Telling the person who clicked what happened, where they clicked."""

from __future__ import annotations

from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.review import Decision
from bot.slack import blocks


def source_of(body: dict[str, Any]) -> tuple[str, str] | None:
    """(channel, message ts) when the click came from a message; None from the App Home."""
    container = body.get("container") or {}
    if container.get("type") == "message":
        return container.get("channel_id"), container.get("message_ts")
    return None


def refusal_text(decision: Decision, user_id: str) -> str | None:
    if decision.outcome == "decided":
        return None
    if decision.outcome == "not_yours" and decision.view is not None:
        return blocks.not_yours_text(decision.view, user_id)
    if decision.outcome == "already_decided" and decision.view is not None:
        return blocks.already_decided_text(decision.view)
    return decision.message or "That review cannot be decided."


async def tell(client: AsyncWebClient, body: dict[str, Any], user_id: str, text: str) -> None:
    """An ephemeral note next to the message clicked, or a DM when the click came from Home."""
    source = source_of(body)
    if source is not None and source[0]:
        await client.chat_postEphemeral(channel=source[0], user=user_id, text=text)
    else:
        await client.chat_postMessage(channel=user_id, text=text)
