"""The sandbox page at /sandbox/: its JSON API against a real sandbox gate (both stand-ins
in-process, as `make run` starts it), and the page itself driven in headless Chromium.

Browser tests use Playwright's Python package with the system's Chromium (`/usr/bin/chromium`,
or CHROMIUM_PATH); they skip with a message when either is missing, except in CI
(`CI=true`), where they fail. Screenshots of every step go to test-artifacts/sandbox/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import AVA, BEN, OPS, OUTSIDER, eventually, free_port

from bot.app import Gate, build_gate, start_slack
from bot.config import load_settings
from bot.sandbox import seed
from bot.web import build_web_app

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "sandbox"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Sandbox:
    gate: Gate
    url: str
    http: aiohttp.ClientSession

    @property
    def hubspot(self) -> Any:
        return next(s for s in self.gate.stand_ins if s.name == "hubspot")

    @property
    def slack(self) -> Any:
        return self.gate.slack_stand_in

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(self.url + path, **kw) as resp:
            return (
                resp.status,
                await resp.json() if resp.content_type == "application/json" else await resp.text(),
            )

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(self.url + path, json=body, **kw) as resp:
            return (
                resp.status,
                await resp.json() if resp.content_type == "application/json" else await resp.text(),
            )

    async def key(self) -> str:
        status, body = await self.get("/sandbox/api/agent-key")
        assert status == 200, body
        return str(body["key"])

    async def propose(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {await self.key()}",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        status, answer = await self.post("/v1/proposals", body, headers=headers)
        assert status == 202, answer
        return dict(answer)

    async def change_status(self, proposal_id: str, status: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {await self.key()}"}

        async def check() -> dict[str, Any] | None:
            _, detail = await self.get(f"/v1/proposals/{proposal_id}", headers=headers)
            return detail if detail["changes"][0]["status"] == status else None

        return dict(await eventually(check, what=f"{proposal_id} to become {status}"))

    async def review_message(self, user: str, proposal_id: str) -> dict[str, Any]:
        """The review of `proposal_id` in the user's DM, as the page's state endpoint shows it."""

        async def find() -> dict[str, Any] | None:
            _, state = await self.get(f"/sandbox/api/slack/{user}")
            for message in state["channels"]["dm"]["messages"]:
                if proposal_id in json.dumps(message.get("blocks") or []):
                    return dict(message)
            return None

        return dict(await eventually(find, what=f"the review DM to {user}"))


@pytest.fixture
def tiers_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The repository's tiers.yaml; `amount_reviewed` (indirect parameter) makes deal amounts
    reviewed, so the Edit modal has a number input."""
    path = ROOT / "tiers.yaml"
    if getattr(request, "param", None) == "amount_reviewed":
        text = path.read_text()
        assert "      amount: never_autonomous\n" in text
        path = tmp_path / "tiers.yaml"
        path.write_text(
            text.replace("      amount: never_autonomous\n", "      amount: reviewed\n", 1)
        )
    return path


@pytest.fixture
async def sandbox(tmp_path: Path, tiers_file: Path) -> AsyncIterator[Sandbox]:
    """A gate exactly as `python -m bot serve --sandbox` builds it, on a free local port."""
    port = free_port()
    settings = load_settings(
        sandbox=True,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        tiers_file=tiers_file,
        port=port,
        commit_linger="10ms",
        job_interval="200ms",
    )
    assert settings.crm_sandbox and settings.slack_sandbox
    gate = await build_gate(settings)
    runner = web.AppRunner(build_web_app(gate), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    await start_slack(gate, url)
    gate.start_jobs()
    http = aiohttp.ClientSession()
    try:
        yield Sandbox(gate, url, http)
    finally:
        await http.close()
        await runner.cleanup()
        await gate.close()


STAGE = {
    "object": "deals",
    "record_id": "9001",
    "changes": {"dealstage": "contractsent"},
    "reason": "Buyer asked for the contract",
}


# --- the JSON API -------------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served(sandbox: Sandbox) -> None:
    status, html = await sandbox.get("/sandbox/")
    assert status == 200 and 'data-testid="slack-panel"' in html
    for asset in ("app.js", "style.css"):
        assert f"/sandbox/static/{asset}" in html
        status, _ = await sandbox.get(f"/sandbox/static/{asset}")
        assert status == 200
    status, _ = await sandbox.get("/sandbox/static/..%2Fpage.py")
    assert status == 404
    status, config = await sandbox.get("/sandbox/api/config")
    assert status == 200
    assert [p["id"] for p in config["people"]] == [p.slack_id for p in seed.SLACK_USERS]
    assert {p["id"]: p["role"] for p in config["people"]}[OPS] == "ops"
    assert config["objects"]["deals"]["fields"]["dealstage"]["tier"] == "reviewed"
    assert config["objects"]["deals"]["options"]["dealstage"]["contractsent"] == "Contract Sent"


async def test_the_agent_key_is_made_once_and_is_a_real_agent_key(sandbox: Sandbox) -> None:
    first, second = await sandbox.key(), await sandbox.key()
    assert first == second  # every tab of the page shares it
    agents = {a.name: a for a in await sandbox.gate.ledger.list_agents()}
    assert "sandbox-page" in agents
    status, _ = await sandbox.post(
        "/v1/proposals", STAGE, headers={"Authorization": "Bearer nope", "Idempotency-Key": "k1"}
    )
    assert status == 401
    body = await sandbox.propose(STAGE)
    assert body["changes"][0]["status"] == "pending_review"


async def test_state_shows_the_review_dm_to_the_owner_only(sandbox: Sandbox) -> None:
    body = await sandbox.propose(STAGE)
    message = await sandbox.review_message(AVA, body["id"])
    buttons = [
        e["action_id"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    assert buttons == ["review_approve", "review_edit", "review_reject"]
    status, ava = await sandbox.get(f"/sandbox/api/slack/{AVA}")
    assert ava["channels"]["dm"]["id"] == sandbox.slack.dm_channel(AVA)
    assert ava["views"] == [] and ava["ephemerals"] == []
    _, ben = await sandbox.get(f"/sandbox/api/slack/{BEN}")
    assert body["id"] not in json.dumps(ben["channels"]["dm"]["messages"])
    status, _ = await sandbox.get("/sandbox/api/slack/U0NOBODY")
    assert status == 404


async def test_a_click_through_the_page_api_commits(sandbox: Sandbox) -> None:
    body = await sandbox.propose(STAGE)
    message = await sandbox.review_message(AVA, body["id"])
    dm = sandbox.slack.dm_channel(AVA)
    status, answer = await sandbox.post(
        f"/sandbox/api/slack/{AVA}/click",
        {"channel": dm, "ts": message["ts"], "action_id": "review_approve"},
    )
    assert status == 200 and answer["ok"], answer
    detail = await sandbox.change_status(body["id"], "committed")
    assert detail["changes"][0]["decided_by"] == AVA
    assert sandbox.hubspot.value("deals", "9001", "dealstage") == "contractsent"
    _, crm = await sandbox.get("/sandbox/api/crm")
    deal = next(r for r in crm["records"]["deals"] if r["id"] == "9001")
    assert deal["properties"]["dealstage"] == "contractsent"
    assert [r["id"] for r in crm["records"]["contacts"]] == list(seed.CONTACTS)
    _, history = await sandbox.get("/sandbox/api/crm/deals/9001/history")
    [proposal] = history["proposals"]
    assert proposal["id"] == body["id"] and proposal["agent"] == "sandbox-page"
    assert proposal["decided_by"] == AVA and proposal["decision"] == "approved"
    [change] = proposal["changes"]
    assert (change["status"], change["before"], change["written"]) == (
        "committed",
        "qualifiedtobuy",
        "contractsent",
    )
    # the page's button clicks act as the chosen user: Ben cannot click in Ava's DM
    status, refused = await sandbox.post(
        f"/sandbox/api/slack/{BEN}/click",
        {"channel": dm, "ts": message["ts"], "action_id": "review_approve"},
    )
    assert status == 400 and "PermissionError" in refused["error"]


async def test_modals_open_submit_and_close_through_the_page_api(sandbox: Sandbox) -> None:
    body = await sandbox.propose(STAGE)
    message = await sandbox.review_message(AVA, body["id"])
    dm = sandbox.slack.dm_channel(AVA)
    click = {"channel": dm, "ts": message["ts"]}

    async def open_modal(action_id: str) -> dict[str, Any]:
        status, answer = await sandbox.post(
            f"/sandbox/api/slack/{AVA}/click", click | {"action_id": action_id}
        )
        assert status == 200, answer

        async def top() -> dict[str, Any] | None:
            _, state = await sandbox.get(f"/sandbox/api/slack/{AVA}")
            return state["views"][-1] if state["views"] else None

        return dict(await eventually(top, what="a modal"))

    edit = await open_modal("review_edit")
    assert edit["callback_id"] == "review_edit_submit"
    status, closed = await sandbox.post(f"/sandbox/api/slack/{AVA}/close", {"view_id": edit["id"]})
    assert status == 200 and closed["ok"]
    _, state = await sandbox.get(f"/sandbox/api/slack/{AVA}")
    assert state["views"] == []

    reject = await open_modal("review_reject")
    status, answer = await sandbox.post(
        f"/sandbox/api/slack/{AVA}/submit",
        {"view_id": reject["id"], "fields": {"reason": "Not before legal signs off"}},
    )
    assert status == 200 and answer["ok"], answer
    await sandbox.change_status(body["id"], "rejected")
    _, history = await sandbox.get("/sandbox/api/crm/deals/9001/history")
    assert history["proposals"][0]["reject_reason"] == "Not before legal signs off"
    assert sandbox.hubspot.value("deals", "9001", "dealstage") == "qualifiedtobuy"
    # a submission Slack itself would refuse comes back as an error, not a crash
    status, answer = await sandbox.post(
        f"/sandbox/api/slack/{AVA}/submit", {"view_id": "VNOPE", "fields": {}}
    )
    assert status == 400 and not answer["ok"] and "VNOPE" in answer["error"]
    status, _ = await sandbox.post(f"/sandbox/api/slack/{AVA}/dance", {})
    assert status == 404


async def test_app_home_through_the_page_api(sandbox: Sandbox) -> None:
    body = await sandbox.propose(STAGE)
    await sandbox.review_message(AVA, body["id"])
    status, answer = await sandbox.post(f"/sandbox/api/slack/{AVA}/open_home", {})
    assert status == 200 and answer["ok"]

    async def home() -> dict[str, Any] | None:
        _, state = await sandbox.get(f"/sandbox/api/slack/{AVA}")
        return state["home"]

    view = await eventually(home, what="the App Home")
    block_id = f"home:{body['id']}"
    assert block_id in json.dumps(view["blocks"])
    status, answer = await sandbox.post(
        f"/sandbox/api/slack/{AVA}/click_home",
        {"action_id": "review_approve", "block_id": block_id},
    )
    assert status == 200 and answer["ok"], answer
    await sandbox.change_status(body["id"], "committed")


async def test_the_page_is_not_mounted_outside_sandbox_mode(
    make_server: Any, slack: Any, tmp_path: Path
) -> None:
    paths = [
        "/sandbox/",
        "/sandbox/static/app.js",
        "/sandbox/api/config",
        "/sandbox/api/agent-key",
        f"/sandbox/api/slack/{AVA}",
        "/sandbox/api/crm",
        "/sandbox/api/crm/deals/9001/history",
    ]

    async def assert_absent(url: str, gate: Gate) -> None:
        async with aiohttp.ClientSession() as http:
            for path in paths:
                async with http.get(url + path) as resp:
                    assert resp.status == 404, path
            async with http.post(f"{url}/sandbox/api/slack/{AVA}/click", json={}) as resp:
                assert resp.status == 404
        assert "sandbox-page" not in {a.name for a in await gate.ledger.list_agents()}

    # a real CRM and real Slack (both reached over HTTP, here at stand-ins)
    server = await make_server()
    assert server.gate.slack_stand_in is None and not server.gate.settings.crm_sandbox
    await assert_absent(server.url, server.gate)

    # the sandbox CRM with a real Slack workspace: still no page (it would act as real users)
    settings = load_settings(
        sandbox=True,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'other.db'}",
        tiers_file=ROOT / "tiers.yaml",
        slack_bot_token=slack.bot_token,
        slack_signing_secret="s3cret",
        slack_api_url=slack.api_url,
        slack_alerts_channel=seed.ALERTS_CHANNEL,
    )
    gate = await build_gate(settings)
    runner = web.AppRunner(build_web_app(gate), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert gate.settings.crm_sandbox and gate.slack_stand_in is None
        await assert_absent(f"http://127.0.0.1:{port}", gate)
    finally:
        await runner.cleanup()
        await gate.close()


# --- the page in a browser ----------------------------------------------------------------------


def chromium_or_skip() -> str:
    """The Chromium executable; skips (fails in CI) when Playwright or Chromium is missing."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        problem = f"the playwright package is not installed ({exc}); pip install playwright"
    candidates = [
        os.environ.get("CHROMIUM_PATH"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ]
    executable = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if problem is None and executable is None:
        problem = "no Chromium executable (apt-get install chromium, or set CHROMIUM_PATH)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests are required in CI: {problem}")
        pytest.skip(problem)
    assert executable is not None
    return executable


@pytest.fixture
async def browser_page(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[Any]:
    executable = chromium_or_skip()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1500, "height": 950},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{sandbox.url}/sandbox/")
            await page.wait_for_selector("body[data-ready]")
            yield page
        finally:
            await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def send_example(page: Any, example: str) -> str:
    """Pick an example in the agent panel, post it, and return the proposal id it got."""
    await page.select_option("[data-testid=example-picker]", example)
    before = await page.locator("[data-testid=proposal-id]").all_inner_texts()
    await page.click("[data-testid=send-proposal]")
    pid = page.locator("[data-testid=proposal-id]")
    await pid.wait_for()
    if before:
        await page.wait_for_function(
            "old => document.querySelector('[data-testid=proposal-id]').textContent !== old",
            arg=before[0],
        )
    assert await page.locator("[data-testid=proposal-http]").inner_text() == "HTTP 202"
    return str(await pid.inner_text())


async def test_browser_rep_approves_and_ops_sees_the_alert(
    sandbox: Sandbox, browser_page: Any
) -> None:
    from playwright.async_api import expect

    page = browser_page
    await page.select_option("[data-testid=user-picker]", AVA)
    stage_id = await send_example(page, "stage")
    await expect(page.locator("[data-testid=proposal-status-dealstage]")).to_contain_text(
        "pending_review"
    )

    review = page.locator(f'[data-testid=message]:has([data-block-id="review:{stage_id}"])')
    await expect(review).to_contain_text("Contract Sent")
    await expect(review.locator("[data-testid=btn-review_approve]")).to_be_visible()
    stage = page.locator("[data-testid=crm-deals-9001-dealstage]")
    await expect(stage).to_have_attribute("data-value", "qualifiedtobuy")
    await shot(page, "01-review-in-ava-dm")

    await review.locator("[data-testid=btn-review_approve]").click()
    updated = page.locator("[data-testid=message]").filter(
        has_text=re.compile("written to the crm", re.I)
    )
    await expect(updated).to_have_count(1)
    await expect(updated.locator("[data-testid=btn-review_approve]")).to_have_count(0)
    await expect(stage).to_have_attribute("data-value", "contractsent")
    await expect(stage).to_have_text("Contract Sent")
    history = page.locator(f'[data-testid=history-proposal][data-proposal-id="{stage_id}"]')
    await expect(history.locator("[data-testid=history-change]")).to_have_attribute(
        "data-status", "committed"
    )
    await expect(page.locator("[data-testid=proposal-status-dealstage]")).to_contain_text(
        "committed"
    )
    assert sandbox.hubspot.value("deals", "9001", "dealstage") == "contractsent"
    await shot(page, "02-approved-and-committed")

    amount_id = await send_example(page, "amount")
    await expect(page.locator("[data-testid=proposal-status-amount]")).to_contain_text("blocked")
    await page.click("[data-testid=tab-alerts]")
    alert = page.locator("[data-testid=message]").filter(has_text=amount_id)
    await expect(alert).to_contain_text("Blocked a never_autonomous write")
    await expect(alert).to_contain_text("amount")
    await expect(page.locator("[data-testid=crm-deals-9001-amount]")).to_have_attribute(
        "data-value", "48000"
    )
    assert sandbox.hubspot.value("deals", "9001", "amount") == "48000"
    await shot(page, "03-amount-blocked-alert")


async def test_browser_ops_rolls_back_a_stage_change(sandbox: Sandbox, browser_page: Any) -> None:
    """Needs /crm-rollback: an ephemeral answer with Confirm (rollback_confirm) / Cancel."""
    from playwright.async_api import expect

    page = browser_page
    await page.select_option("[data-testid=user-picker]", AVA)
    stage_id = await send_example(page, "stage")
    review = page.locator(f'[data-testid=message]:has([data-block-id="review:{stage_id}"])')
    await review.locator("[data-testid=btn-review_approve]").click()
    stage = page.locator("[data-testid=crm-deals-9001-dealstage]")
    await expect(stage).to_have_attribute("data-value", "contractsent")

    await page.select_option("[data-testid=user-picker]", OPS)
    await expect(page.locator("[data-testid=role-note]")).to_contain_text("ops")
    await page.fill("[data-testid=command-input]", f"/crm-rollback {stage_id}")
    await page.click("[data-testid=command-send]")
    await expect(page.locator("[data-testid=command-error]")).to_be_hidden()
    preview = page.locator("[data-testid=ephemeral]").filter(
        has=page.locator("[data-testid=btn-rollback_confirm]")
    )
    await expect(preview).to_have_count(1)
    await expect(preview.locator("[data-testid=only-you]")).to_be_visible()
    await expect(preview.locator("[data-testid=btn-rollback_cancel]")).to_be_visible()
    await shot(page, "04-ops-rollback-preview")

    await preview.locator("[data-testid=btn-rollback_confirm]").click()
    dialog = page.locator("[data-testid=confirm-dialog]")
    if await dialog.count():  # a Slack confirmation dialog on the button, if the app asks for one
        await page.click("[data-testid=confirm-yes]")
    await expect(stage).to_have_attribute("data-value", "qualifiedtobuy", timeout=15_000)
    await expect(stage).to_have_text("Qualified To Buy")
    assert sandbox.hubspot.value("deals", "9001", "dealstage") == "qualifiedtobuy"
    await shot(page, "05-rolled-back")


async def test_browser_outsider_cannot_approve(sandbox: Sandbox, browser_page: Any) -> None:
    from playwright.async_api import expect

    page = browser_page
    # Deal 9002's owner leaves Slack: its reviews go to the shared #crm-reviews channel, where
    # anyone can see (and click) them; the gate must refuse a click from someone who may not decide.
    hubspot = sandbox.hubspot
    hubspot.owners["104"] = {
        **hubspot.owners["102"],
        "id": "104",
        "email": "left.company@example.com",
    }
    hubspot.human_edit("deals", "9002", "hubspot_owner_id", "104")
    body = await sandbox.propose({**STAGE, "record_id": "9002"})

    await page.select_option("[data-testid=user-picker]", OUTSIDER)
    await page.click("[data-testid=tab-reviews]")
    review = page.locator(f'[data-testid=message]:has([data-block-id="review:{body["id"]}"])')
    await expect(review).to_contain_text("left.company@example.com")
    await review.locator("[data-testid=btn-review_approve]").click()
    refusal = page.locator("[data-testid=ephemeral]")
    await expect(refusal).to_have_count(1)
    await expect(refusal.locator("[data-testid=only-you]")).to_have_text(
        re.compile("Only visible to you")
    )
    assert " not " in f" {(await refusal.inner_text()).lower()} "
    await shot(page, "06-outsider-refused")

    await asyncio.sleep(0.5)  # give a wrongly accepted click time to commit
    detail = await sandbox.change_status(body["id"], "pending_review")
    assert detail["changes"][0]["decided_by"] is None
    assert hubspot.value("deals", "9002", "dealstage") == "presentationscheduled"
    # the refusal is the outsider's alone
    await page.select_option("[data-testid=user-picker]", AVA)
    await page.click("[data-testid=tab-reviews]")
    await expect(review).to_be_visible()
    await expect(page.locator("[data-testid=ephemeral]")).to_have_count(0)


@pytest.mark.parametrize("tiers_file", ["amount_reviewed"], indirect=True)
async def test_browser_edit_modal_shows_errors_in_place(
    sandbox: Sandbox, browser_page: Any
) -> None:
    from playwright.async_api import expect

    page = browser_page
    body = await sandbox.propose({**STAGE, "changes": {"amount": 52000}})
    assert body["changes"][0]["status"] == "pending_review"
    review = page.locator(f'[data-testid=message]:has([data-block-id="review:{body["id"]}"])')
    await review.locator("[data-testid=btn-review_edit]").click()
    modal = page.locator("[data-testid=modal]")
    await expect(modal.locator("[data-testid=modal-title]")).to_have_text("Edit and approve")
    change_id = body["changes"][0]["id"]
    amount = modal.locator(f'[data-testid="input-chg:{change_id}"]')
    await expect(amount).to_have_attribute("type", "number")
    await expect(amount).to_have_value("52000")

    await amount.fill("1e40")  # a number to the browser, not to the CRM
    await modal.locator("[data-testid=modal-submit]").click()
    error = modal.locator(f'[data-testid="error-chg:{change_id}"]')
    await expect(error).to_have_text("Enter a number.")
    await expect(modal).to_be_visible()
    await shot(page, "07-edit-modal-error")
    assert (await sandbox.change_status(body["id"], "pending_review"))["changes"][0][
        "decided_by"
    ] is None

    await amount.fill("51000")
    await modal.locator("[data-testid=modal-submit]").click()
    await expect(modal).to_have_count(0)
    detail = await sandbox.change_status(body["id"], "committed")
    assert detail["changes"][0]["written"] == 51000
    await expect(page.locator("[data-testid=crm-deals-9001-amount]")).to_have_attribute(
        "data-value", "51000"
    )
