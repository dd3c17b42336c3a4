"""The Slack stand-in, driven by the real slack_sdk and slack_bolt over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox import seed
from bot.sandbox.slack import AppRejected, SlackStandIn

AVA, BEN, OPS = seed.OWNERS[0].slack_id, seed.OWNERS[1].slack_id, seed.OPS_USER.slack_id


def button(action_id: str, value: str = "v", text: str = "Go") -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "value": value,
        "text": {"type": "plain_text", "text": text},
    }


def actions(*elements: dict[str, Any], block_id: str = "decide") -> dict[str, Any]:
    return {"type": "actions", "block_id": block_id, "elements": list(elements)}


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def modal(**extra: Any) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": "edit_modal",
        "title": {"type": "plain_text", "text": "Edit"},
        "blocks": [section("Edit the proposal")],
        **extra,
    }


EDIT_FORM = modal(
    submit={"type": "plain_text", "text": "Save"},
    private_metadata="proposal-7",
    blocks=[
        {
            "type": "input",
            "block_id": "amount",
            "label": {"type": "plain_text", "text": "Amount"},
            "element": {"type": "plain_text_input", "action_id": "value"},
        },
        {
            "type": "input",
            "block_id": "stage",
            "label": {"type": "plain_text", "text": "Stage"},
            "element": {
                "type": "static_select",
                "action_id": "stage",
                "options": [
                    {"text": {"type": "plain_text", "text": label}, "value": value}
                    for value, label in seed.DEAL_STAGES
                ],
            },
        },
        {
            "type": "input",
            "block_id": "close",
            "optional": True,
            "label": {"type": "plain_text", "text": "Close date"},
            "element": {"type": "datepicker", "action_id": "date"},
        },
    ],
)


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn()
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
def client(slack: SlackStandIn) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


@pytest.fixture
def app(slack: SlackStandIn) -> AsyncApp:
    web_client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    return AsyncApp(client=web_client, signing_secret=slack.signing_secret)


@pytest.fixture
async def serve(slack: SlackStandIn) -> AsyncIterator[Callable[[AsyncApp], Awaitable[None]]]:
    """Serve a Bolt app over HTTP on 127.0.0.1 and point the stand-in's events_url at it."""
    runners: list[web.AppRunner] = []

    async def start(bolt_app: AsyncApp) -> None:
        runner = web.AppRunner(bolt_app.web_app(path="/slack/events"))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        slack.events_url = f"http://{host}:{port}/slack/events"

    yield start
    for runner in runners:
        await runner.cleanup()


async def error_of(call: Awaitable[Any]) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


async def eventually(check: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- Web API --------------------------------------------------------------------------------------
async def test_auth_test_names_the_bot(slack: SlackStandIn, client: AsyncWebClient) -> None:
    resp = await client.auth_test()
    assert (resp["user_id"], resp["team_id"], resp["bot_id"]) == ("U0BOT", "T0SANDBOX", "B0SANDBOX")
    assert slack.api_calls("auth.test") == 1


async def test_bad_missing_and_wrong_kind_of_token_are_refused(slack: SlackStandIn) -> None:
    bad = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    assert (await error_of(bad.auth_test())).response["error"] == "invalid_auth"
    anonymous = AsyncWebClient(base_url=slack.api_url)
    assert (await error_of(anonymous.auth_test())).response["error"] == "not_authed"
    app_token = AsyncWebClient(token=slack.app_token, base_url=slack.api_url)
    err = await error_of(app_token.chat_postMessage(channel=seed.ALERTS_CHANNEL, text="x"))
    assert err.response["error"] == "not_allowed_token_type"
    assert slack.messages(seed.ALERTS_CHANNEL) == []


async def test_token_as_a_form_field_is_accepted(slack: SlackStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{slack.api_url}auth.test", data={"token": slack.bot_token}) as r:
            assert (r.status, (await r.json())["ok"]) == (200, True)
        async with session.post(f"{slack.api_url}auth.test", data={"token": "nope"}) as r:
            assert await r.json() == {"ok": False, "error": "invalid_auth"}


async def test_form_encoded_blocks_may_be_a_json_string(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    form = {"channel": seed.ALERTS_CHANNEL, "text": "form", "blocks": json.dumps([section("x")])}
    await client.api_call("chat.postMessage", data=form)
    stored = slack.last_message(seed.ALERTS_CHANNEL)
    assert stored is not None and stored["blocks"][0]["text"]["text"] == "x"
    err = await error_of(client.api_call("chat.postMessage", data=form | {"blocks": "[{bad"}))
    assert err.response["error"] == "invalid_blocks_format"
    assert slack.api_requests("chat.postMessage")[0]["text"] == "form"


async def test_dm_post_update_and_edit_history(slack: SlackStandIn, client: AsyncWebClient) -> None:
    opened = await client.conversations_open(users=AVA)
    dm = opened["channel"]["id"]
    assert dm == slack.dm_channel(AVA) and dm.startswith("D")
    assert (await client.conversations_open(users=AVA))["already_open"] is True
    posted = await client.chat_postMessage(
        channel=dm,
        text="Review deal 9001",
        blocks=[section("*Deal 9001*"), actions(button("approve"))],
    )
    assert posted["channel"] == dm and posted["message"]["text"] == "Review deal 9001"
    stored = slack.last_message(dm)
    assert stored is not None and stored["ts"] == posted["ts"] and stored["user"] == "U0BOT"
    assert stored["blocks"][0]["block_id"]  # Slack fills in missing block ids

    await client.chat_update(channel=dm, ts=posted["ts"], text="Approved by Ava")
    updated = slack.message(dm, posted["ts"])
    assert updated is not None and updated["text"] == "Approved by Ava" and "edited" in updated
    assert updated["blocks"] == stored["blocks"]  # left out of the update, so kept
    assert [m["text"] for m in slack.edits(dm, posted["ts"])] == ["Review deal 9001"]
    err = await error_of(client.chat_update(channel=dm, ts="1.000001", text="x"))
    assert err.response["error"] == "message_not_found"


async def test_posting_to_a_user_id_opens_the_dm(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    resp = await client.chat_postMessage(channel=BEN, text="hi")
    assert resp["channel"] == slack.dm_channel(BEN)
    assert [m["text"] for m in slack.messages(slack.dm_channel(BEN))] == ["hi"]


async def test_unknown_channel_unopened_dm_and_empty_message_are_refused(
    client: AsyncWebClient,
) -> None:
    for channel in ("C0NOPE", "D0AVA"):
        err = await error_of(client.chat_postMessage(channel=channel, text="x"))
        assert err.response["error"] == "channel_not_found"
    with pytest.warns(UserWarning, match="text"):  # slack_sdk's own nudge
        err = await error_of(client.chat_postMessage(channel=seed.ALERTS_CHANNEL))
    assert err.response["error"] == "no_text"
    # by name, as Slack still accepts
    resp = await client.chat_postMessage(channel=f"#{seed.ALERTS_CHANNEL_NAME}", text="alert")
    assert resp["channel"] == seed.ALERTS_CHANNEL


@pytest.mark.parametrize(
    ("blocks", "pointer"),
    [
        ([section("x")] * 51, "/blocks]"),
        ([actions(button("a"), button("a"))], "/blocks/0/elements/1/action_id"),
        ([actions(button("a", value="v" * 2001))], "/blocks/0/elements/0/value"),
        ([actions(button("a", text="t" * 76))], "/blocks/0/elements/0/text/text"),
        ([section("s" * 3001)], "/blocks/0/text/text"),
        (
            [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
            "/blocks/0/fields",
        ),
        (
            [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
            "/blocks/0/fields/0/text",
        ),
        ([actions(button("a" * 256))], "/blocks/0/elements/0/action_id"),
        (
            [actions(button("a"), block_id="b"), actions(button("c"), block_id="b")],
            "/blocks/1/block_id",
        ),
        (
            [
                actions(
                    {
                        "type": "static_select",
                        "action_id": "s",
                        "options": [
                            {"text": {"type": "plain_text", "text": str(i)}, "value": str(i)}
                            for i in range(101)
                        ],
                    }
                )
            ],
            "/blocks/0/elements/0/options",
        ),
        (
            [
                actions(
                    {
                        "type": "static_select",
                        "action_id": "s",
                        "options": [
                            {"text": {"type": "plain_text", "text": "o"}, "value": "v" * 151}
                        ],
                    }
                )
            ],
            "/blocks/0/elements/0/options/0/value",
        ),
        ([{"type": "bogus"}], "/blocks/0]"),
    ],
)
async def test_block_kit_limits_are_refused(
    slack: SlackStandIn, client: AsyncWebClient, blocks: list[dict[str, Any]], pointer: str
) -> None:
    err = await error_of(
        client.chat_postMessage(channel=seed.ALERTS_CHANNEL, text="t", blocks=blocks)
    )
    assert err.response["error"] == "invalid_blocks"
    messages = err.response["response_metadata"]["messages"]
    assert any(pointer in m and m.startswith("[ERROR]") for m in messages), messages
    assert slack.messages(seed.ALERTS_CHANNEL) == []


async def test_limits_themselves_are_allowed(slack: SlackStandIn, client: AsyncWebClient) -> None:
    blocks = [section("s" * 3000)] * 49 + [
        actions(button("a" * 255, value="v" * 2000, text="t" * 75))
    ]
    await client.chat_postMessage(channel=seed.ALERTS_CHANNEL, text="t", blocks=blocks)
    assert len(slack.messages(seed.ALERTS_CHANNEL)[0]["blocks"]) == 50


async def test_ephemerals_are_kept_per_user(slack: SlackStandIn, client: AsyncWebClient) -> None:
    resp = await client.chat_postEphemeral(channel=seed.FALLBACK_CHANNEL, user=BEN, text="only you")
    assert [(e["channel"], e["text"], e["ts"]) for e in slack.ephemerals(BEN)] == [
        (seed.FALLBACK_CHANNEL, "only you", resp["message_ts"])
    ]
    assert slack.ephemerals(AVA) == [] and slack.messages(seed.FALLBACK_CHANNEL) == []
    await client.conversations_open(users=AVA)
    err = await error_of(
        client.chat_postEphemeral(channel=slack.dm_channel(AVA), user=BEN, text="x")
    )
    assert err.response["error"] == "user_not_in_channel"


async def test_users_and_usergroups(client: AsyncWebClient) -> None:
    found = await client.users_lookupByEmail(email="chloe.martin@example.com")
    assert (
        found["user"]["id"] == "U0CHLOE"
        and found["user"]["profile"]["email"] == "chloe.martin@example.com"
    )
    info = await client.users_info(user=AVA)
    assert info["user"]["real_name"] == "Ava Reed" and info["user"]["tz"]
    err = await error_of(client.users_lookupByEmail(email="nobody@example.com"))
    assert err.response["error"] == "users_not_found"
    assert (await client.usergroups_users_list(usergroup="S0OPS"))["users"] == [OPS]
    err = await error_of(client.usergroups_users_list(usergroup="S0NOPE"))
    assert err.response["error"] == "no_such_subteam"


async def test_views_open_needs_a_fresh_unused_trigger(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    trigger = slack.issue_trigger(AVA)
    opened = await client.views_open(trigger_id=trigger, view=modal())
    assert opened["view"]["id"].startswith("V") and opened["view"]["callback_id"] == "edit_modal"
    assert [v["id"] for v in slack.views(AVA)] == [opened["view"]["id"]]
    err = await error_of(client.views_open(trigger_id=trigger, view=modal()))
    assert err.response["error"] == "exchanged_trigger_id"
    stale = slack.issue_trigger(BEN, issued_ago=3.5)
    err = await error_of(client.views_open(trigger_id=stale, view=modal()))
    assert err.response["error"] == "expired_trigger_id"
    err = await error_of(client.views_open(trigger_id="1.2.made-up", view=modal()))
    assert err.response["error"] == "invalid_trigger_id"
    assert slack.views(BEN) == []


@pytest.mark.parametrize(
    ("view", "pointer"),
    [
        (modal(private_metadata="m" * 3001), "/view/private_metadata"),
        (modal(title={"type": "plain_text", "text": "t" * 25}), "/view/title/text"),
        (modal(submit={"type": "plain_text", "text": "s" * 25}), "/view/submit/text"),
        (modal(blocks=[section("x")] * 101), "/view/blocks]"),
        (modal(blocks=EDIT_FORM["blocks"]), "/view]"),  # inputs need a submit button
    ],
)
async def test_invalid_modals_are_refused(
    slack: SlackStandIn, client: AsyncWebClient, view: dict[str, Any], pointer: str
) -> None:
    err = await error_of(client.views_open(trigger_id=slack.issue_trigger(AVA), view=view))
    assert err.response["error"] == "invalid_arguments"
    assert any(pointer in m for m in err.response["response_metadata"]["messages"])
    assert slack.views(AVA) == []


async def test_oversized_view_is_too_large(slack: SlackStandIn, client: AsyncWebClient) -> None:
    view = modal(blocks=[section("x" * 3000)] * 90)
    err = await error_of(client.views_open(trigger_id=slack.issue_trigger(AVA), view=view))
    assert err.response["error"] == "view_too_large"


async def test_views_update_and_publish(slack: SlackStandIn, client: AsyncWebClient) -> None:
    opened = (
        await client.views_open(trigger_id=slack.issue_trigger(AVA), view=modal(external_id="p7"))
    )["view"]
    updated = await client.views_update(
        view_id=opened["id"], hash=opened["hash"], view=modal(blocks=[section("Saved")])
    )
    assert updated["view"]["id"] == opened["id"] and updated["view"]["hash"] != opened["hash"]
    assert slack.views(AVA)[0]["blocks"][0]["text"]["text"] == "Saved"
    err = await error_of(
        client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal())
    )
    assert err.response["error"] == "hash_conflict"
    by_external = await client.views_update(external_id="p7", view=modal(blocks=[section("Again")]))
    assert by_external["view"]["id"] == opened["id"]
    pushed = await client.views_push(trigger_id=slack.issue_trigger(AVA), view=modal())
    assert pushed["view"]["previous_view_id"] == opened["id"]
    assert [v["id"] for v in slack.views(AVA)] == [opened["id"], pushed["view"]["id"]]

    home = {"type": "home", "blocks": [section("Your reviews"), actions(button("refresh"))]}
    published = await client.views_publish(user_id=BEN, view=home)
    stored = slack.home(BEN)
    assert (
        stored is not None and stored["id"] == published["view"]["id"] and stored["type"] == "home"
    )
    err = await error_of(client.views_publish(user_id=BEN, view=modal()))
    assert err.response["error"] == "invalid_arguments"


async def test_post_message_burst_gets_429_and_a_retrying_client_gets_through(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    slack.message_burst = 2
    for i in range(2):
        await client.chat_postMessage(channel=seed.ALERTS_CHANNEL, text=f"alert {i}")
    err = await error_of(client.chat_postMessage(channel=seed.ALERTS_CHANNEL, text="too fast"))
    assert err.response.status_code == 429 and err.response["error"] == "ratelimited"
    assert int(err.response.headers["Retry-After"]) >= 1
    # another channel has its own allowance
    await client.chat_postMessage(channel=seed.FALLBACK_CHANNEL, text="elsewhere")

    retrying = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler()],
    )
    started = time.monotonic()
    resp = await retrying.chat_postMessage(channel=seed.ALERTS_CHANNEL, text="patient")
    assert resp["ok"] and time.monotonic() - started >= 1.0
    assert [m["text"] for m in slack.messages(seed.ALERTS_CHANNEL)] == [
        "alert 0",
        "alert 1",
        "patient",
    ]
    assert slack.rate_limited >= 2

    slack.message_rate = None  # lifted
    for i in range(10):
        await client.chat_postMessage(channel=seed.FALLBACK_CHANNEL, text=str(i))
    assert len(slack.messages(seed.FALLBACK_CHANNEL)) == 11


async def test_injected_rate_limit_has_slacks_shape(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    slack.faults.rate_limit = 1
    await client.auth_test()
    err = await error_of(client.auth_test())
    assert err.response.status_code == 429 and err.response["error"] == "ratelimited"
    assert "Retry-After" in err.response.headers


async def test_apps_connections_open_needs_the_app_token(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    err = await error_of(client.apps_connections_open(app_token=slack.bot_token))
    assert err.response["error"] == "not_allowed_token_type"
    resp = await client.apps_connections_open(app_token=slack.app_token)
    assert resp["url"].startswith(f"ws://127.0.0.1:{slack.port}/socket?")


# --- driving a Bolt app over HTTP -----------------------------------------------------------------
async def test_click_reaches_the_action_listener_signed(
    slack: SlackStandIn, app: AsyncApp, serve: Callable[[AsyncApp], Awaitable[None]]
) -> None:
    clicks: list[dict[str, Any]] = []
    done = asyncio.Event()

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        clicks.append(body)
        await client.chat_update(
            channel=body["container"]["channel_id"],
            ts=body["container"]["message_ts"],
            text=f"Approved by <@{body['user']['id']}>",
            blocks=[section("Approved")],
        )
        done.set()

    await serve(app)
    posted = await app.client.chat_postMessage(
        channel=AVA,
        text="Review",
        blocks=[section("Deal 9001"), actions(button("approve", "proposal-7"))],
    )
    dm = posted["channel"]

    # a forged signature and a stale timestamp are turned away by Bolt
    forged = "v0=" + "0" * 64
    for kwargs in ({"signature": forged}, {"timestamp": int(time.time()) - 600}):
        with pytest.raises(AppRejected) as rejected:
            await slack.click(AVA, dm, posted["ts"], "approve", **kwargs)
        assert rejected.value.status == 401
    assert clicks == []

    assert await slack.click(AVA, dm, posted["ts"], "approve") is None
    await asyncio.wait_for(done.wait(), 3)
    body = clicks[0]
    assert body["type"] == "block_actions" and body["user"]["id"] == AVA
    assert (
        body["actions"][0]["value"] == "proposal-7" and body["actions"][0]["block_id"] == "decide"
    )
    assert body["message"]["ts"] == posted["ts"] and body["trigger_id"] and body["response_url"]
    message = slack.message(dm, posted["ts"])
    assert message is not None and message["text"] == f"Approved by <@{AVA}>"
    assert slack.api_calls("auth.test") == 1  # Bolt's lazy identity check

    assert len(clicks) == 1

    with pytest.raises(LookupError):
        await slack.click(AVA, dm, posted["ts"], "reject")  # no such button
    with pytest.raises(PermissionError):
        await slack.click(BEN, dm, posted["ts"], "approve")  # Ava's DM


async def test_view_opened_from_a_click_and_submitted(
    slack: SlackStandIn, app: AsyncApp, serve: Callable[[AsyncApp], Awaitable[None]]
) -> None:
    opened = asyncio.Event()
    submitted: list[dict[str, Any]] = []

    @app.action("edit")
    async def edit(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.views_open(trigger_id=body["trigger_id"], view=EDIT_FORM)
        opened.set()

    @app.view("edit_modal")
    async def save(ack: Any, view: dict[str, Any]) -> None:
        values = view["state"]["values"]
        if not (values["amount"]["value"]["value"] or "").isdigit():
            await ack(response_action="errors", errors={"amount": "Must be a number"})
            return
        await ack()
        submitted.append(view)

    await serve(app)
    posted = await app.client.chat_postMessage(
        channel=AVA, text="Review", blocks=[actions(button("edit"))]
    )
    await slack.click(AVA, posted["channel"], posted["ts"], "edit")
    await asyncio.wait_for(opened.wait(), 3)
    (view,) = slack.views(AVA)

    answer = await slack.submit_form(AVA, view["id"], {"amount": "lots", "stage": "Closed Won"})
    assert answer == {"response_action": "errors", "errors": {"amount": "Must be a number"}}
    assert [v["id"] for v in slack.views(AVA)] == [view["id"]]  # still open

    with pytest.raises(ValueError):
        await slack.submit_form(AVA, view["id"], {"amount": "5"})  # stage is required

    answer = await slack.submit_view(
        AVA,
        view["id"],
        {
            "amount": {"value": {"type": "plain_text_input", "value": "52000"}},
            "stage": {
                "stage": {
                    "type": "static_select",
                    "selected_option": {
                        "text": {"type": "plain_text", "text": "Closed Won"},
                        "value": "closedwon",
                    },
                }
            },
            "close": {"date": {"type": "datepicker", "selected_date": "2026-12-31"}},
        },
    )
    assert answer is None and slack.views(AVA) == []  # an empty ack closes the modal
    values = submitted[0]["state"]["values"]
    assert values["stage"]["stage"]["selected_option"]["value"] == "closedwon"
    assert values["close"]["date"] == {"type": "datepicker", "selected_date": "2026-12-31"}
    assert submitted[0]["private_metadata"] == "proposal-7"


async def test_command_acks_and_responds_through_the_response_url(
    slack: SlackStandIn, app: AsyncApp, serve: Callable[[AsyncApp], Awaitable[None]]
) -> None:
    responded = asyncio.Event()
    seen: list[dict[str, Any]] = []

    @app.command("/crm-rollback")
    async def rollback(ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack("Rolling back…")
        seen.append(command)
        await respond(text=f"Rolled back {command['text']}", response_type="in_channel")
        responded.set()

    await serve(app)
    answer = await slack.command(OPS, "/crm-rollback", "change:42", channel_id=seed.ALERTS_CHANNEL)
    assert answer == "Rolling back…"  # Bolt answers ack(text) over HTTP as text/plain
    assert [e["text"] for e in slack.ephemerals(OPS)] == ["Rolling back…"]  # the ack, shown to OPS
    await asyncio.wait_for(responded.wait(), 3)
    assert seen[0]["user_id"] == OPS and seen[0]["channel_id"] == seed.ALERTS_CHANNEL
    (post,) = slack.responses
    assert (
        post.status == 200 and post.user_id == OPS and post.body["text"] == "Rolled back change:42"
    )
    assert slack.last_message(seed.ALERTS_CHANNEL)["text"] == "Rolled back change:42"  # type: ignore[index]


async def test_response_url_replaces_and_deletes_the_original(
    slack: SlackStandIn, app: AsyncApp, serve: Callable[[AsyncApp], Awaitable[None]]
) -> None:
    done = asyncio.Event()

    @app.action("approve")
    async def approve(ack: Any, respond: Any) -> None:
        await ack()
        await respond(replace_original=True, text="Approved")
        done.set()

    @app.action("dismiss")
    async def dismiss(ack: Any, respond: Any) -> None:
        await ack()
        await respond(delete_original=True)
        done.set()

    await serve(app)
    posted = await app.client.chat_postMessage(
        channel=seed.FALLBACK_CHANNEL,
        text="Review",
        blocks=[actions(button("approve"), button("dismiss"))],
    )
    await slack.click(BEN, seed.FALLBACK_CHANNEL, posted["ts"], "approve")
    await asyncio.wait_for(done.wait(), 3)
    assert slack.message(seed.FALLBACK_CHANNEL, posted["ts"])["text"] == "Approved"  # type: ignore[index]
    done.clear()
    await slack.click(BEN, seed.FALLBACK_CHANNEL, posted["ts"], "dismiss")
    await asyncio.wait_for(done.wait(), 3)
    assert slack.messages(seed.FALLBACK_CHANNEL) == []
    assert [r.status for r in slack.responses] == [200, 200]


async def test_app_home_opened_then_a_home_click(
    slack: SlackStandIn, app: AsyncApp, serve: Callable[[AsyncApp], Awaitable[None]]
) -> None:
    published, clicked = asyncio.Event(), asyncio.Event()
    containers: list[dict[str, Any]] = []

    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        await client.views_publish(
            user_id=event["user"], view={"type": "home", "blocks": [actions(button("refresh"))]}
        )
        published.set()

    @app.action("refresh")
    async def refresh(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        containers.append(body["container"])
        clicked.set()

    await serve(app)
    await slack.open_app_home(CHLOE := seed.OWNERS[2].slack_id)
    await asyncio.wait_for(published.wait(), 3)
    home = slack.home(CHLOE)
    assert home is not None
    await slack.click_home(CHLOE, "refresh")
    await asyncio.wait_for(clicked.wait(), 3)
    assert containers == [{"type": "view", "view_id": home["id"]}]


async def test_sandbox_endpoints_show_state_and_drive(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    await client.chat_postMessage(
        channel=seed.ALERTS_CHANNEL, text="alert", blocks=[actions(button("ack"))]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{slack.url}/_sandbox/state") as r:
            state = await r.json()
        assert state["messages"][seed.ALERTS_CHANNEL][0]["text"] == "alert"
        assert {u["id"] for u in state["users"]} == {p.slack_id for p in seed.SLACK_USERS}
        ts = state["messages"][seed.ALERTS_CHANNEL][0]["ts"]
        click = {"user_id": OPS, "channel": seed.ALERTS_CHANNEL, "ts": ts, "action_id": "nope"}
        async with session.post(f"{slack.url}/_sandbox/click", json=click) as r:
            assert r.status == 400 and "LookupError" in (await r.json())["error"]
        async with session.post(
            f"{slack.url}/_sandbox/click", json=click | {"action_id": "ack"}
        ) as r:
            assert r.status == 400 and "events_url" in (await r.json())["error"]  # no app to reach
    assert slack.api_calls("chat.postMessage") == 1  # /_sandbox calls are not logged as API calls


# --- Socket Mode ------------------------------------------------------------------------------------
async def test_socket_mode_click_and_command_are_delivered_and_acked(
    slack: SlackStandIn, app: AsyncApp
) -> None:
    clicked = asyncio.Event()
    users: list[str] = []

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        users.append(body["user"]["id"])
        clicked.set()

    @app.command("/crm-rollback")
    async def rollback(ack: Any) -> None:
        await ack("queued")

    handler = AsyncSocketModeHandler(app, slack.app_token)
    await handler.connect_async()
    try:
        await eventually(lambda: slack.socket_connected)
        assert slack.api_calls("apps.connections.open") == 1 and slack.events_url is None
        posted = await app.client.chat_postMessage(
            channel=AVA, text="R", blocks=[actions(button("approve"))]
        )
        assert await slack.click(AVA, posted["channel"], posted["ts"], "approve") is None
        await asyncio.wait_for(clicked.wait(), 3)
        assert users == [AVA] and len(slack.acks) == 1
        assert await slack.command(OPS, "/crm-rollback", "run:7") == {"text": "queued"}
        assert slack.acks[-1]["payload"] == {"text": "queued"}
    finally:
        await handler.close_async()
