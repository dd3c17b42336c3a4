"""Modal submissions: Edit (approve with edited values) and Reject (with a reason).

Edited values are checked before the ack, so a bad value is refused inside the modal
(`response_action: errors`); the decision itself happens after the ack.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain import ChangeStatus
from bot.slack import blocks
from bot.slack.events import publish_home
from bot.slack.replies import refusal_text

if TYPE_CHECKING:
    from bot.app import Gate


def _metadata(view: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    meta = json.loads(view.get("private_metadata") or "{}")
    source = meta.get("source")
    return str(meta.get("proposal_id", "")), (tuple(source) if source else None)  # type: ignore[return-value]


async def _after(gate: Gate, client: AsyncWebClient, user_id: str, decision: Any, source: Any) -> None:
    text = refusal_text(decision, user_id)
    if text:
        if source:
            await client.chat_postEphemeral(channel=source[0], user=user_id, text=text)
        else:
            await client.chat_postMessage(channel=user_id, text=text)
    if source is None:
        await publish_home(gate, client, user_id)


def register(app: AsyncApp, gate: Gate) -> None:
    @app.view("review_edit_submit")
    async def edit_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient) -> None:
        user_id = body["user"]["id"]
        proposal_id, source = _metadata(view)
        review = await gate.reviews.view(proposal_id)
        if review is None:
            await ack()
            return
        pending = [line for line in review.lines if line.status == ChangeStatus.PENDING_REVIEW.value]
        values, errors = blocks.parse_edit_submission(view["state"]["values"], pending)
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        decision = await gate.reviews.decide(proposal_id, user_id, "edit", edits=values, source=source)
        await _after(gate, client, user_id, decision, source)

    @app.view("review_reject_submit")
    async def reject_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        user_id = body["user"]["id"]
        proposal_id, source = _metadata(view)
        reason = blocks.parse_reject_submission(view["state"]["values"])
        decision = await gate.reviews.decide(proposal_id, user_id, "reject", reason=reason, source=source)
        await _after(gate, client, user_id, decision, source)
