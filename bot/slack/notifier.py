"""The engine's Notifier, spoken through Slack."""

from __future__ import annotations

from typing import Any

from slack_sdk.web.async_client import AsyncWebClient


class SlackNotifier:
    def __init__(self, client: AsyncWebClient, alerts_channel: str) -> None:
        self.client = client
        self.alerts_channel = alerts_channel

    async def post_alert(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        await self.client.chat_postMessage(
            channel=self.alerts_channel, text=text, blocks=blocks, unfurl_links=False
        )
