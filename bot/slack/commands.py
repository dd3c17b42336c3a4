"""/crm-rollback: preview, confirm, undo. Ops only; every refused attempt is audited.

The command is acked at once; the preview (which reads the CRM) and the result arrive through
the command's response_url as ephemeral messages that replace each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.engine.ports import CRMError
from bot.engine.rollback import HELP, TargetError
from bot.slack import blocks

if TYPE_CHECKING:
    from bot.app import Gate

NOT_OPS = "Only ops may roll back agent writes (SLACK_OPS_USERS or the ops user group). This attempt was recorded."


def register(app: AsyncApp, gate: Gate) -> None:
    @app.command("/crm-rollback")
    async def rollback(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        user_id = command["user_id"]
        target = (command.get("text") or "").strip()
        if target in ("", "help"):
            await ack(text=HELP)
            return
        if not await gate.reviews.is_ops(user_id):
            await ack(text=NOT_OPS)
            await gate.rollbacks.refused(user_id, target)
            return
        await ack(text=f"Looking up what `{target}` would revert…")
        try:
            plan = await gate.rollbacks.preview(target, user_id)
        except TargetError as exc:
            await respond(text=str(exc), response_type="ephemeral")
            return
        except CRMError as exc:
            await respond(text=f"The CRM could not be read for the preview: {exc.message}", response_type="ephemeral")
            return
        text, body = blocks.rollback_preview(plan)
        await respond(text=text, blocks=body, response_type="ephemeral")

    async def confirm(body: dict[str, Any], respond: AsyncRespond, include_conflicts: bool) -> None:
        user_id = body["user"]["id"]
        rollback_id = body["actions"][0]["value"]
        if not await gate.reviews.is_ops(user_id):
            await gate.rollbacks.refused(user_id, rollback_id)
            await respond(text=NOT_OPS, replace_original=False)
            return
        queued = await gate.rollbacks.confirm(rollback_id, user_id, include_conflicts=include_conflicts)
        status = await gate.rollbacks.status(rollback_id)
        if not queued and status["state"] != "confirmed":
            await respond(text="This rollback was already confirmed or cancelled.", replace_original=False)
            return
        text, result = blocks.rollback_result(status)
        await respond(text=text, blocks=result, replace_original=True)
        status = await gate.rollbacks.wait(rollback_id)
        text, result = blocks.rollback_result(status)
        await respond(text=text, blocks=result, replace_original=True)

    @app.action(blocks.ROLLBACK_CONFIRM)
    async def confirmed(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await confirm(body, respond, include_conflicts=False)

    @app.action(blocks.ROLLBACK_CONFIRM_FORCE)
    async def forced(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await confirm(body, respond, include_conflicts=True)

    @app.action(blocks.ROLLBACK_INCLUDE_CONFLICTS)
    async def include_conflicts(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        rollback_id = body["actions"][0]["value"]
        status = await gate.rollbacks.status(rollback_id)
        conflicts = status["conflicts"]
        text, second = blocks.rollback_force_confirm(rollback_id, conflicts)
        await respond(text=text, blocks=second, replace_original=True)

    @app.action(blocks.ROLLBACK_CANCEL)
    async def cancel(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        cancelled = await gate.rollbacks.cancel(body["actions"][0]["value"], body["user"]["id"])
        await respond(text="Rollback cancelled; nothing was written." if cancelled else "Too late to cancel.", replace_original=True)
