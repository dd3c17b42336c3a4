"""The engine's Notifier and ReviewChannel, spoken through the Slack Web API.

User and DM-channel lookups are cached with an expiry: they change rarely, and Slack's Tier 3
limits make a lookup per review wasteful. A cache is all this holds; no decision lives here.
"""

from __future__ import annotations

import time
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.model import ReviewView
from bot.ledger.repo import utcnow
from bot.slack import blocks


class TTLCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        if len(self._items) > 50_000:
            self._items.clear()
        self._items[key] = (time.monotonic() + (self.ttl if ttl is None else ttl), value)


class SlackChannel:
    def __init__(self, client: AsyncWebClient, alerts_channel: str, *, user_ttl: float = 3600.0) -> None:
        self.client = client
        self.alerts_channel = alerts_channel
        self._users = TTLCache(user_ttl)
        self._dms = TTLCache(user_ttl)
        self._groups = TTLCache(300.0)

    # --- Notifier ------------------------------------------------------------------------------
    async def post_alert(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        await self.client.chat_postMessage(channel=self.alerts_channel, text=text, blocks=blocks, unfurl_links=False)

    # --- ReviewChannel -------------------------------------------------------------------------
    async def find_user(self, email: str) -> str | None:
        key = email.lower()
        hit, value = self._users.get(key)
        if hit:
            return value  # type: ignore[no-any-return]
        try:
            resp = await self.client.users_lookupByEmail(email=email)
        except SlackApiError as exc:
            if exc.response.get("error") == "users_not_found":
                self._users.put(key, None, ttl=300.0)  # a new hire may join soon
                return None
            raise
        user = resp["user"]
        user_id = None if user.get("deleted") or user.get("is_bot") else user["id"]
        self._users.put(key, user_id)
        return user_id

    async def open_dm(self, user_id: str) -> str:
        hit, value = self._dms.get(user_id)
        if hit:
            return value  # type: ignore[no-any-return]
        resp = await self.client.conversations_open(users=user_id)
        channel = resp["channel"]["id"]
        self._dms.put(user_id, channel)
        return channel  # type: ignore[no-any-return]

    async def post_review(self, channel: str, view: ReviewView) -> str:
        text, body = blocks.review_message(view, now=utcnow())
        resp = await self.client.chat_postMessage(channel=channel, text=text, blocks=body, unfurl_links=False)
        return resp["ts"]  # type: ignore[no-any-return]

    async def update_review(self, channel: str, message_id: str, view: ReviewView) -> None:
        text, body = blocks.review_message(view, now=utcnow())
        await self.client.chat_update(channel=channel, ts=message_id, text=text, blocks=body)

    async def remind(self, channel: str, message_id: str, view: ReviewView) -> None:
        await self.client.chat_postMessage(
            channel=channel, thread_ts=message_id, text=blocks.reminder_text(view, utcnow())
        )

    async def group_members(self, group_id: str) -> set[str]:
        hit, value = self._groups.get(group_id)
        if hit:
            return value  # type: ignore[no-any-return]
        resp = await self.client.usergroups_users_list(usergroup=group_id)
        members = set(resp.get("users") or [])
        self._groups.put(group_id, members)
        return members
