"""Button clicks on a review: Approve, Edit, Reject. Each acks at once, then calls the engine."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import blocks
from bot.slack.events import publish_home
from bot.slack.replies import refusal_text, source_of, tell

if TYPE_CHECKING:
    from bot.app import Gate


def register(app: AsyncApp, gate: Gate) -> None:
    @app.action("review_approve")
    async def approve(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        user_id = body["user"]["id"]
        decision = await gate.reviews.decide(body["actions"][0]["value"], user_id, "approve", source=source_of(body))
        text = refusal_text(decision, user_id)
        if text:
            await tell(client, body, user_id, text)
        if source_of(body) is None:
            await publish_home(gate, client, user_id)

    async def open_modal(body: dict[str, Any], client: AsyncWebClient, kind: str) -> None:
        user_id = body["user"]["id"]
        proposal_id = body["actions"][0]["value"]
        view = await gate.reviews.view(proposal_id)
        problem = None
        if view is None:
            problem = "There is no such review."
        elif not await gate.reviews.may_decide(view, user_id):
            problem = blocks.not_yours_text(view, user_id)
        elif view.state != "pending":
            problem = blocks.already_decided_text(view)
        if problem or view is None:
            await tell(client, body, user_id, problem or "")
            return
        source = source_of(body)
        metadata = json.dumps({"proposal_id": proposal_id, "source": list(source) if source else None})
        modal = (
            blocks.edit_modal(view, private_metadata=metadata)
            if kind == "edit"
            else blocks.reject_modal(view, private_metadata=metadata)
        )
        await client.views_open(trigger_id=body["trigger_id"], view=modal)

    @app.action("review_edit")
    async def edit(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await open_modal(body, client, "edit")

    @app.action("review_reject")
    async def reject(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await open_modal(body, client, "reject")
