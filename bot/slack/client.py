"""The one Slack Web API client of the process, with 429 and 5xx retries switched on, and every
HTTP call counted by method and status (Bolt's per-request clients share this session)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics


def make_client(token: str, base_url: str, metrics: Metrics | None = None) -> AsyncWebClient:
    trace = aiohttp.TraceConfig()
    if metrics is not None:

        async def on_end(_session: Any, _ctx: SimpleNamespace, params: Any) -> None:
            method = params.url.path.rsplit("/", 1)[-1]
            metrics.slack_calls.labels(method, str(params.response.status)).inc()

        async def on_error(_session: Any, _ctx: SimpleNamespace, params: Any) -> None:
            method = params.url.path.rsplit("/", 1)[-1]
            metrics.slack_calls.labels(method, type(params.exception).__name__).inc()

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_error)
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        timeout=15,
        session=aiohttp.ClientSession(trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=30)),
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )
