"""Block Kit for reviews (bot.slack.blocks): pure tests, then the same output posted through the
real slack_sdk client to the Slack stand-in, which refuses what Slack refuses."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.model import FieldSpec, ReviewLine, ReviewView
from bot.sandbox import seed
from bot.sandbox.slack import VIEW_MAX_BYTES, SlackStandIn, _Checker
from bot.slack import blocks as b

AVA, BEN = seed.OWNERS[0].slack_id, seed.OWNERS[1].slack_id
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=2)
DECIDED_AT = NOW - timedelta(minutes=5)

STAGE = FieldSpec("dealstage", "Deal stage", "enumeration", seed.DEAL_STAGES)
AMOUNT = FieldSpec("amount", "Amount", "number")
CLOSE = FieldSpec("closedate", "Close date", "date")
FOLLOW = FieldSpec("followup_at", "Follow-up", "datetime")
NEXT = FieldSpec("hs_next_step", "Next step", "string")
DESC = FieldSpec("description", "Description", "text")
KEY = FieldSpec("is_key", "Key account", "bool")
TASK = FieldSpec("task", "Task", "string")
BIG_ENUM = FieldSpec(
    "industry", "Industry", "enumeration", tuple((f"v{i}", f"Industry {i}") for i in range(150))
)

EVIL = "<!channel> <http://evil|click> <@U0BEN> & co"


def line(
    change_id: str = "c1",
    field: FieldSpec = STAGE,
    current: Any = "qualifiedtobuy",
    proposed: Any = "contractsent",
    status: str = "pending_review",
    **kw: Any,
) -> ReviewLine:
    return ReviewLine(
        change_id=change_id,
        field=field,
        kind=kw.pop("kind", "field"),
        current=current,
        proposed=proposed,
        status=status,
        **kw,
    )


def review(*lines: ReviewLine, **kw: Any) -> ReviewView:
    fields: dict[str, Any] = {
        "proposal_id": "p-1",
        "object_type": "deal",
        "record_id": "9001",
        "record_name": "Acme Corp - Platform renewal",
        "record_url": "https://app.hubspot.com/contacts/1/deal/9001",
        "agent": "enrichment-bot",
        "reason": "The customer signed the order form",
        "evidence": ("https://mail.example.com/thread/1",),
        "run_id": "run-42",
        "created_at": NOW - timedelta(hours=1),
        "expires_at": EXPIRES,
        "state": "pending",
        "lines": lines or (line(),),
        "reviewer_id": AVA,
    }
    return ReviewView(**(fields | kw))


def all_lines() -> tuple[ReviewLine, ...]:
    return (
        line("c1", STAGE, "qualifiedtobuy", "contractsent"),
        line("c2", AMOUNT, "48000", "52000.5"),
        line("c3", CLOSE, "2026-12-19T00:00:00.000Z", "2027-01-31T00:00:00.000Z"),
        line("c4", FOLLOW, None, "2026-06-01T09:30:00Z"),
        line("c5", NEXT, "Send questionnaire", "Book the signing call"),
        line("c6", DESC, "Renewal", "Renewal of the platform licence,\n3 years."),
        line("c7", KEY, "false", "true"),
        line("c8", NEXT, "a", "b", status="committed"),  # not pending: not editable
        line(
            "c9",
            TASK,
            None,
            {"kind": "task", "subject": "Call Wile", "body": "About the MSA"},
            kind="activity",
        ),
    )


def check_message(blocks: list[dict[str, Any]]) -> None:
    checker = _Checker()
    checker.blocks(blocks, b.MESSAGE_BLOCKS, "/blocks")
    assert checker.errors == []


def check_view(view: dict[str, Any], kind: str) -> None:
    checker = _Checker()
    checker.view(view, kind)  # type: ignore[arg-type]
    assert checker.errors == []
    assert len(json.dumps(view)) < VIEW_MAX_BYTES


def mrkdwn_texts(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if obj.get("type") == "mrkdwn":
            yield obj["text"]
        for value in obj.values():
            yield from mrkdwn_texts(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from mrkdwn_texts(item)


def section_texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [blk["text"]["text"] for blk in blocks if blk["type"] == "section"]


def actions_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [blk for blk in blocks if blk["type"] == "actions"]


SAFE_TOKEN = re.compile(
    r"@U[A-Z0-9]+|!date\^\d+\^\{date_short_pretty\} at \{time\}\|[^|<>]+|https?://[^|\s<>]+\|[^<>]*"
)
BROKEN_ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")


def assert_safe(text: str, links: set[str] = frozenset(), mentions: set[str] = frozenset()) -> None:
    """Every `<...>` token is one of ours: a known link, a known mention or a date."""
    for token in re.findall(r"<([^<>]*)>", text):
        assert SAFE_TOKEN.fullmatch(token), (token, text)
        if token.startswith("http"):
            assert token.split("|")[0] in links, token
        if token.startswith("@"):
            assert token[1:] in mentions, token
    assert "<!channel>" not in text and "<http://evil" not in text
    assert not BROKEN_ENTITY.search(text), text


# --- the review message -------------------------------------------------------------------------
def test_pending_message_has_three_buttons_carrying_the_proposal_id() -> None:
    _, blocks = b.review_message(review(), now=NOW)
    (actions,) = actions_blocks(blocks)
    assert blocks[-1] is actions and actions["block_id"] == "review:p-1"
    buttons = {e["action_id"]: e for e in actions["elements"]}
    assert list(buttons) == ["review_approve", "review_edit", "review_reject"]
    assert [e["text"]["text"] for e in buttons.values()] == ["Approve", "Edit", "Reject"]
    assert buttons["review_approve"]["style"] == "primary"
    assert "style" not in buttons["review_edit"]
    assert buttons["review_reject"]["style"] == "danger"
    assert all(e["value"] == "p-1" and "confirm" not in e for e in buttons.values())
    check_message(blocks)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"decision": "approved"}, f"Approved by <@{AVA}> at <!date^"),
        ({"decision": "edited"}, f"Approved with edits by <@{AVA}> at <!date^"),
        (
            {"decision": "rejected", "reject_reason": "wrong deal"},
            f"Rejected by <@{AVA}> at <!date^",
        ),
        ({"state": "expired", "decision": "expired", "decided_by": None}, "Expired at <!date^"),
    ],
)
def test_decided_message_has_no_buttons_and_says_what_happened(
    changes: dict[str, Any], expected: str
) -> None:
    view = review(
        state=changes.pop("state", "decided"),
        decided_by=changes.pop("decided_by", AVA),
        decided_at=DECIDED_AT,
        **changes,
    )
    text, blocks = b.review_message(view, now=NOW)
    assert actions_blocks(blocks) == []
    last = blocks[-1]["elements"][0]["text"]
    assert blocks[-1]["type"] == "context" and expected in last
    assert f"<!date^{int(DECIDED_AT.timestamp())}^" in last
    if view.decision == "rejected":
        assert last.endswith(": wrong deal")
        assert text.startswith(f"Rejected by <@{AVA}>: Deal stage: Qualified To Buy → Contract")
    if view.decision == "expired":
        assert last.endswith("without a decision") and text.startswith("Expired without")
    assert "Expires" not in json.dumps(blocks)  # the expiry line is for pending reviews only
    check_message(blocks)


def test_text_fallback_names_the_agent_the_change_and_the_record() -> None:
    text, _ = b.review_message(review(), now=NOW)
    assert text == (
        "Review needed: agent enrichment-bot proposes Deal stage: Qualified To Buy → Contract Sent"
        " on Acme Corp - Platform renewal"
    )
    three = review(line("c1"), line("c2", AMOUNT, "1", "2"), line("c3", NEXT, None, "x"))
    text, _ = b.review_message(three, now=NOW)
    assert text.endswith("Contract Sent and 2 more changes on Acme Corp - Platform renewal")
    decided = replace(three, state="decided", decision="approved", decided_by=BEN)
    text, _ = b.review_message(decided, now=NOW)
    assert text.startswith(f"Approved by <@{BEN}>: Deal stage: Qualified To Buy → Contract Sent")


def test_message_shows_record_link_agent_reason_evidence_run_and_expiry() -> None:
    view = review(
        evidence=(
            "https://mail.example.com/thread/1?a=1&b=2",
            "javascript:alert(1)",
            "the call notes from Tuesday",
        )
    )
    _, blocks = b.review_message(view, now=NOW)
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Acme Corp - Platform renewal", "emoji": True},
    }
    intro, evidence = section_texts(blocks)[:2]
    assert intro.startswith(
        "<https://app.hubspot.com/contacts/1/deal/9001|Acme Corp - Platform renewal> · deal"
    )
    assert "*Proposed by* enrichment-bot" in intro
    assert "*Reason:* The customer signed the order form" in intro
    assert (
        "<https://mail.example.com/thread/1?a=1&amp;b=2|mail.example.com/thread/1?a=1&amp;b=2>"
        in evidence
    )
    assert "“javascript:alert(1)”" in evidence and "<javascript" not in evidence
    assert "“the call notes from Tuesday”" in evidence
    context = blocks[3]["elements"][0]["text"]
    assert "Run `run-42`" in context
    assert (
        f"Expires <!date^{int(EXPIRES.timestamp())}^{{date_short_pretty}} at {{time}}"
        "|2026-05-01 14:00 UTC>" in context
    )
    assert all(t["verbatim"] is True for t in map(lambda blk: blk["text"], blocks[1:3]))
    check_message(blocks)


def test_route_note_explains_why_the_review_is_in_this_channel() -> None:
    _, plain = b.review_message(review(), now=NOW)
    note = "the record owner ava.reed@example.com has no Slack user"
    _, blocks = b.review_message(review(route_note=note, reviewer_id=None), now=NOW)
    assert len(blocks) == len(plain) + 1
    contexts = [blk["elements"][0]["text"] for blk in blocks if blk["type"] == "context"]
    assert any("Sent to this channel" in c and note in c for c in contexts)


def test_values_use_option_labels_and_show_empty() -> None:
    view = review(
        line("c1", STAGE, None, "closedwon"),
        line("c2", KEY, "false", True),
        line("c3", CLOSE, "2026-12-19T00:00:00.000Z", "2027-01-31"),
        line("c4", STAGE, "qualifiedtobuy", "not-a-stage"),
    )
    _, blocks = b.review_message(view, now=NOW)
    texts = section_texts(blocks)
    assert "*Deal stage*\n_(empty)_ → Closed Won" in texts
    assert "*Key account*\nNo → Yes" in texts
    assert "*Close date*\n2026-12-19 → 2027-01-31" in texts
    assert "*Deal stage*\nQualified To Buy → not-a-stage" in texts  # unknown values shown raw


def test_edited_approval_shows_the_approved_value_marked_edited() -> None:
    edited = line(approved="closedwon", edited=True, status="committed")
    view = review(edited, state="decided", decision="edited", decided_by=AVA, decided_at=NOW)
    _, blocks = b.review_message(view, now=NOW)
    text = next(t for t in section_texts(blocks) if t.startswith("*Deal stage*"))
    assert text.splitlines()[1] == (
        "Qualified To Buy → Closed Won _(edited; the agent proposed Contract Sent)_"
    )
    assert "Written to the CRM" in text


def test_each_line_shows_its_outcome_once_decided() -> None:
    lines = (
        line("c1", status="committed"),
        line("c2", AMOUNT, "1", "2", status="conflict", now_value="3"),
        line("c3", STAGE, status="conflict", now_value="closedlost"),
        line("c4", NEXT, "a", "b", status="failed", error="FIELD_CUSTOM_VALIDATION_EXCEPTION: no"),
        line("c5", NEXT, "a", "b", status="rejected"),
        line("c6", NEXT, "a", "b", status="expired"),
        line("c7", NEXT, "a", "b", status="committed", rolled_back_by=BEN),
    )
    pending = b.review_message(review(*lines), now=NOW)[1]
    assert not any("Written to the CRM" in t for t in section_texts(pending))
    view = review(*lines, state="decided", decision="approved", decided_by=AVA, decided_at=NOW)
    outcomes = [t.splitlines()[-1] for t in section_texts(b.review_message(view, now=NOW)[1])[2:]]
    assert outcomes == [
        ":white_check_mark: Written to the CRM",
        ":warning: Conflict: the CRM now holds 3; nothing written",
        ":warning: Conflict: the CRM now holds Closed Lost; nothing written",
        ":x: Failed: FIELD_CUSTOM_VALIDATION_EXCEPTION: no",
        ":no_entry_sign: Rejected",
        ":hourglass: Expired",
        f":white_check_mark: Written to the CRM · :leftwards_arrow_with_hook: Rolled back by <@{BEN}>",
    ]


def test_activities_show_their_proposed_body() -> None:
    task = line(
        "c9",
        TASK,
        None,
        {"kind": "task", "subject": "Call Wile", "body": "About MSA", "due": "2026-05-04"},
        kind="activity",
    )
    _, blocks = b.review_message(review(task), now=NOW)
    (text,) = [t for t in section_texts(blocks) if t.startswith("*Task*")]
    assert text == "*Task*\n*Call Wile* · _due 2026-05-04_\nAbout MSA"


def test_untrusted_text_is_escaped_everywhere() -> None:
    evil_lines = (
        line("c1", NEXT, EVIL, EVIL, status="failed", error=EVIL),
        line(
            "c2",
            FieldSpec("x", EVIL, "enumeration", (("a", EVIL),)),
            "a",
            "b",
            status="conflict",
            now_value=EVIL,
        ),
        line("c3", TASK, None, {"subject": EVIL, "body": EVIL}, kind="activity"),
    )
    pending = review(
        *evil_lines,
        record_name=EVIL,
        record_url="javascript:alert(1)//<!channel>",
        agent=EVIL,
        reason=EVIL,
        evidence=(EVIL, "http://evil|click"),
        run_id=EVIL,
        route_note=EVIL,
        reviewer_id="<!channel>",
    )
    decided = replace(
        pending,
        state="decided",
        decision="rejected",
        decided_by="<!here>",
        decided_at=NOW,
        reject_reason=EVIL,
    )
    outputs: list[Any] = [
        b.review_message(pending, now=NOW),
        b.review_message(decided, now=NOW),
        b.edit_modal(pending, private_metadata="p-1"),
        b.reject_modal(pending, private_metadata="p-1"),
        b.home_view(AVA, [pending], [decided], now=NOW),
    ]
    texts = [t for out in outputs for t in mrkdwn_texts(out)]
    texts += [b.not_yours_text(pending, BEN), b.already_decided_text(decided)]
    texts += [b.reminder_text(pending, NOW), outputs[0][0], outputs[1][0]]
    for text in texts:
        assert_safe(text, mentions={AVA})
    joined = "\n".join(texts)
    assert "&lt;!channel&gt; &lt;http://evil|click&gt; &lt;@U0BEN&gt; &amp; co" in joined
    assert "<@U0BEN>" not in joined
    # plain_text (header, labels) is never parsed by Slack: shown as typed
    assert outputs[0][1][0]["text"]["text"] == EVIL
    for out in outputs[:2]:
        check_message(out[1])


def test_long_values_are_clipped_without_breaking_escapes() -> None:
    view = review(
        line("c1", NEXT, "&" * 10_000, "x" * 10_000),
        line("c2", DESC, "<" * 10_000, "😀" * 10_000),
        record_name="&" * 5_000,
        reason=">" * 10_000,
    )
    text, blocks = b.review_message(view, now=NOW)
    check_message(blocks)
    assert len(text) <= 3000 and len(blocks[0]["text"]["text"]) == 150
    sections = section_texts(blocks)
    for section in sections:
        assert b._ulen(section) <= 3000 and not BROKEN_ENTITY.search(section)
    first = next(s for s in sections if s.startswith("*Next step*"))
    current, proposed = first.splitlines()[1].split(" → ")
    assert len(current) <= 300 and current.endswith("&amp;…") and proposed == "x" * 299 + "…"
    emoji = next(s for s in sections if s.startswith("*Description*")).split(" → ")[1]
    assert b._ulen(emoji) <= 300 and emoji.endswith("…")


def test_80_lines_fit_in_50_blocks_and_keep_the_buttons() -> None:
    lines = tuple(line(f"c{i}", NEXT, f"old {i}", f"new {i}") for i in range(80))
    view = review(*lines, route_note="no Slack user", evidence=("a", "b"))
    _, blocks = b.review_message(view, now=NOW)
    check_message(blocks)
    assert len(blocks) == 50 and blocks[-1]["block_id"] == "review:p-1"
    shown = [t for t in section_texts(blocks) if t.startswith("*Next step*")]
    more = blocks[-2]["text"]["text"]
    assert more == f"…and {80 - len(shown)} more changes"
    assert shown[0].endswith("old 0 → new 0") and len(shown) > 35


def test_huge_inputs_never_break_message_limits() -> None:
    big = "&<>" * 5_000
    lines = tuple(
        line(
            f"{'c' * 300}{i}",
            FieldSpec("f", big, "string"),
            big,
            big,
            status="failed",
            error=big,
            rolled_back_by="U" + "A" * 40,
            approved=big,
            edited=True,
        )
        for i in range(100)
    )
    view = review(
        *lines,
        proposal_id="p" * 300,
        record_name=big,
        record_url="https://example.com/" + "a" * 5000,
        agent=big,
        reason=big,
        evidence=tuple(f"https://example.com/{i}/{'&' * 3000}" for i in range(300)),
        run_id=big,
        route_note=big,
    )
    for state in (
        view,
        replace(
            view,
            state="decided",
            decision="rejected",
            reject_reason=big,
            decided_by="U0AVA",
            decided_at=NOW,
        ),
    ):
        text, blocks = b.review_message(state, now=NOW)
        check_message(blocks)
        assert len(text) <= 3000 and len(blocks) <= 50
    _, pending_blocks = b.review_message(view, now=NOW)
    buttons = pending_blocks[-1]
    assert len(buttons["block_id"]) == 255 and buttons["elements"][0]["value"] == "p" * 300


# --- the edit modal -----------------------------------------------------------------------------
def test_edit_modal_types_each_input_from_its_field_spec() -> None:
    view = review(*all_lines())
    modal = b.edit_modal(view, private_metadata='{"proposal": "p-1"}')
    check_view(modal, "modal")
    assert modal["callback_id"] == "review_edit_submit"
    assert modal["title"]["text"] == "Edit and approve"
    assert (modal["submit"]["text"], modal["close"]["text"]) == ("Approve", "Cancel")
    assert modal["private_metadata"] == '{"proposal": "p-1"}'
    context = modal["blocks"][0]["elements"][0]["text"]
    assert "Acme Corp - Platform renewal" in context and "enrichment-bot" in context
    inputs = {blk["block_id"]: blk for blk in modal["blocks"] if blk["type"] == "input"}
    assert list(inputs) == [f"chg:c{i}" for i in range(1, 8)]  # c8 is committed, c9 a task
    el = {k: v["element"] for k, v in inputs.items()}
    assert all(e["action_id"] == "value" for e in el.values())
    assert inputs["chg:c1"]["label"]["text"] == "Deal stage"

    stage = el["chg:c1"]
    assert stage["type"] == "static_select" and len(stage["options"]) == 7
    assert stage["options"][0] == {
        "text": {"type": "plain_text", "text": "Appointment Scheduled", "emoji": True},
        "value": "appointmentscheduled",
    }
    assert stage["initial_option"]["value"] == "contractsent"
    assert stage["initial_option"] in stage["options"]
    assert el["chg:c2"] == {
        "type": "number_input",
        "action_id": "value",
        "is_decimal_allowed": True,
        "initial_value": "52000.5",
    }
    assert el["chg:c3"]["type"] == "datepicker" and el["chg:c3"]["initial_date"] == "2027-01-31"
    assert el["chg:c4"]["type"] == "datepicker" and el["chg:c4"]["initial_date"] == "2026-06-01"
    assert el["chg:c5"]["type"] == "plain_text_input" and "multiline" not in el["chg:c5"]
    assert el["chg:c5"]["initial_value"] == "Book the signing call"
    assert el["chg:c6"]["multiline"] is True
    assert el["chg:c6"]["initial_value"] == "Renewal of the platform licence,\n3 years."
    assert el["chg:c7"]["type"] == "static_select"
    assert [o["value"] for o in el["chg:c7"]["options"]] == ["true", "false"]
    assert el["chg:c7"]["initial_option"]["value"] == "true"
    # only string/text may be left empty (clears the field)
    assert {k for k, v in inputs.items() if v["optional"]} == {"chg:c5", "chg:c6"}
    task = next(t for t in section_texts(modal["blocks"]) if t.startswith("*Task*"))
    assert "not editable" in task and "*Call Wile*" in task and "About the MSA" in task


def test_edit_modal_initial_values_are_left_out_when_unusable() -> None:
    view = review(
        line("c1", STAGE, "qualifiedtobuy", "made-up-stage"),
        line("c2", AMOUNT, "1", "lots"),
        line("c3", CLOSE, None, "next Tuesday"),
        line("c4", NEXT, "a", None),
    )
    inputs = [blk["element"] for blk in b.edit_modal(view, private_metadata="")["blocks"][1:]]
    assert [i["type"] for i in inputs] == [
        "static_select",
        "number_input",
        "datepicker",
        "plain_text_input",
    ]
    assert not any(k.startswith("initial_") for i in inputs for k in i)


def test_edit_modal_over_100_options_falls_back_to_typing_the_value() -> None:
    view = review(line("c1", BIG_ENUM, "v1", "v7"))
    modal = b.edit_modal(view, private_metadata="")
    check_view(modal, "modal")
    (block,) = [blk for blk in modal["blocks"] if blk["type"] == "input"]
    assert block["element"]["type"] == "plain_text_input"
    assert block["element"]["initial_value"] == "v7"
    assert block["hint"]["text"].startswith("Type one of the CRM's values for this field: v0, v1")
    assert len(block["hint"]["text"]) <= 2000 and block["optional"] is False


def test_edit_modal_does_not_offer_values_too_long_for_slack_inputs() -> None:
    view = review(line("c1", DESC, "short", "y" * 5000), line("c2", NEXT, "a", "b"))
    modal = b.edit_modal(view, private_metadata="")
    check_view(modal, "modal")
    assert [blk["block_id"] for blk in modal["blocks"] if blk["type"] == "input"] == ["chg:c2"]
    text = next(t for t in section_texts(modal["blocks"]) if t.startswith("*Description*"))
    assert "too long to edit in Slack (5,000 characters); approved as proposed" in text


def test_edit_modal_with_many_heavy_inputs_stays_within_view_limits() -> None:
    wide = FieldSpec(
        "f",
        "L" * 3000,
        "enumeration",
        tuple((f"{i:03d}" + "v" * 140, "😀" * 80) for i in range(100)),
    )
    lines = tuple(line(f"c{i}", wide, None, f"{i % 100:03d}" + "v" * 140) for i in range(150))
    modal = b.edit_modal(review(*lines), private_metadata="m" * 3000)
    check_view(modal, "modal")
    assert len(modal["blocks"]) <= 100
    assert modal["blocks"][-1]["text"]["text"].endswith(
        "more changes not shown here: approved as proposed."
    )
    many = b.edit_modal(
        review(*(line(f"c{i}", NEXT, "a", "b") for i in range(150))), private_metadata=""
    )
    check_view(many, "modal")
    assert len(many["blocks"]) == 100
    assert many["blocks"][-1]["text"]["text"].startswith("…and 52 more changes")


def test_modals_refuse_private_metadata_slack_would_refuse() -> None:
    with pytest.raises(ValueError, match="3000"):
        b.edit_modal(review(), private_metadata="x" * 3001)
    with pytest.raises(ValueError, match="3000"):
        b.reject_modal(review(), private_metadata="x" * 3001)


# --- reading the edit modal back ----------------------------------------------------------------
def sel(value: str) -> dict[str, Any]:
    return {
        "value": {
            "type": "static_select",
            "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
        }
    }


def txt(value: str | None, kind: str = "plain_text_input") -> dict[str, Any]:
    return {"value": {"type": kind, "value": value}}


def day(value: str | None) -> dict[str, Any]:
    return {"value": {"type": "datepicker", "selected_date": value}}


def test_parse_edit_submission_turns_inputs_into_values() -> None:
    values = {
        "chg:c1": sel("closedwon"),
        "chg:c2": txt("52000.5", "number_input"),
        "chg:c3": day("2027-02-01"),
        "chg:c4": day("2026-07-01"),
        "chg:c5": txt(""),
        "chg:c6": txt("Two\nlines"),
        "chg:c7": sel("false"),
    }
    parsed, errors = b.parse_edit_submission(values, all_lines())
    assert errors == {}
    assert parsed == {
        "c1": "closedwon",
        "c2": 52000.5,
        "c3": "2027-02-01",
        "c4": "2026-07-01T00:00:00Z",
        "c5": None,
        "c6": "Two\nlines",
        "c7": "false",
    }
    parsed, _ = b.parse_edit_submission({"chg:c2": txt("48000", "number_input")}, all_lines())
    assert parsed == {"c2": 48000} and type(parsed["c2"]) is int
    # an enumeration typed as text (more than 100 options) is still checked against the CRM's
    typed = [line("c1", BIG_ENUM, None, "v1")]
    assert b.parse_edit_submission({"chg:c1": txt("v149")}, typed) == ({"c1": "v149"}, {})


@pytest.mark.parametrize(
    ("block_id", "state", "message"),
    [
        ("chg:c2", txt("lots", "number_input"), "Enter a number."),
        ("chg:c2", txt("1e999", "number_input"), "Enter a number."),
        ("chg:c2", txt("NaN", "number_input"), "Enter a number."),
        ("chg:c2", txt("12345678901234567890", "number_input"), "Enter a number of at most 18 digits."),
        ("chg:c2", txt(None, "number_input"), "Enter a number."),
        ("chg:c3", day("2027/02/01"), "Enter a date as YYYY-MM-DD."),
        ("chg:c3", day("2027-02-30"), "Enter a date as YYYY-MM-DD."),
        ("chg:c4", day("2027-02-01T10:00:00Z"), "Enter a date as YYYY-MM-DD."),
        ("chg:c3", day(None), "Choose a value."),
        ("chg:c1", sel("hacked"), "Choose one of the CRM's values for this field."),
        (
            "chg:c1",
            {"value": {"type": "static_select", "selected_option": None}},
            "Choose a value.",
        ),
        ("chg:c7", sel("maybe"), "Choose a value."),
        ("chg:c6", txt("z" * 65_537), "Too long: at most 65,536 characters."),
        ("chg:nope", txt("x"), "This change is not waiting for review."),
        ("chg:c8", txt("x"), "This change is not waiting for review."),  # committed already
        ("chg:c9", txt("x"), "This change is not waiting for review."),  # an activity
        ("chg:c5", {"other": {"type": "plain_text_input", "value": "x"}}, "Invalid value."),
        ("chg:c5", {"value": {"type": "plain_text_input", "value": 12}}, "Invalid value."),
    ],
)
def test_parse_edit_submission_reports_errors_under_the_block_id(
    block_id: str, state: dict[str, Any], message: str
) -> None:
    values = {"chg:c5": txt("fine"), block_id: state} if block_id != "chg:c5" else {block_id: state}
    parsed, errors = b.parse_edit_submission(values, all_lines())
    assert errors == {block_id: message}
    assert block_id.removeprefix("chg:") not in parsed
    if block_id != "chg:c5":
        assert parsed == {"c5": "fine"}


def test_parse_edit_submission_accepts_the_longest_text() -> None:
    parsed, errors = b.parse_edit_submission({"chg:c6": txt("z" * 65_536)}, all_lines())
    assert errors == {} and len(parsed["c6"]) == 65_536


# --- the reject modal ---------------------------------------------------------------------------
def test_reject_modal_summarises_and_asks_for_an_optional_reason() -> None:
    lines = tuple(line(f"c{i}", NEXT, f"old {i}", f"new {i}") for i in range(12))
    modal = b.reject_modal(review(*lines), private_metadata="p-1")
    check_view(modal, "modal")
    assert modal["callback_id"] == "review_reject_submit"
    assert (modal["title"]["text"], modal["submit"]["text"], modal["close"]["text"]) == (
        "Reject changes",
        "Reject",
        "Cancel",
    )
    assert modal["private_metadata"] == "p-1"
    summary, reason = modal["blocks"]
    text = summary["text"]["text"]
    assert text.startswith("Reject 12 changes to <https://app.hubspot.com/contacts/1/deal/9001|")
    assert "• *Next step*: old 0 → new 0" in text and text.endswith("…and 4 more changes")
    assert reason["block_id"] == "reason" and reason["optional"] is True
    assert reason["element"] == {
        "type": "plain_text_input",
        "action_id": "value",
        "multiline": True,
        "max_length": 2000,
    }


def test_parse_reject_submission() -> None:
    assert b.parse_reject_submission({"reason": txt("  wrong deal \n")}) == "wrong deal"
    assert b.parse_reject_submission({"reason": txt(None)}) is None
    assert b.parse_reject_submission({"reason": txt("   ")}) is None
    assert b.parse_reject_submission({}) is None
    assert b.parse_reject_submission({"reason": txt("r" * 5000)}) == "r" * 2000


# --- App Home -----------------------------------------------------------------------------------
def pending_views(n: int) -> list[ReviewView]:
    return [
        review(
            line("c1"),
            line("c2", AMOUNT, "1", "2"),
            line("c3", NEXT, "a", "b"),
            line("c4", NEXT, "c", "d"),
            proposal_id=f"p-{i}",
            record_name=f"Deal {i}",
        )
        for i in range(n)
    ]


def recent_views(n: int) -> list[ReviewView]:
    kinds = ["approved", "edited", "rejected", "expired"]
    return [
        review(
            proposal_id=f"r-{i}",
            state="expired" if kinds[i % 4] == "expired" else "decided",
            decision=kinds[i % 4],
            decided_by=BEN,
            decided_at=DECIDED_AT,
            reject_reason="stale data",
        )
        for i in range(n)
    ]


def test_home_view_with_60_pending_reviews_stays_within_100_blocks() -> None:
    home = b.home_view(AVA, pending_views(60), recent_views(40), now=NOW)
    check_view(home, "home")
    blocks = home["blocks"]
    assert home["type"] == "home" and len(blocks) <= 100
    headers = [blk["text"]["text"] for blk in blocks if blk["type"] == "header"]
    assert headers == ["Pending reviews", "Recent decisions"]
    actions = actions_blocks(blocks)
    assert actions[0]["block_id"] == "home:p-0"
    assert [e["action_id"] for e in actions[0]["elements"]] == [
        "review_approve",
        "review_edit",
        "review_reject",
    ]
    assert all(
        e["value"] == a["block_id"].removeprefix("home:") for a in actions for e in a["elements"]
    )
    more = [t for t in section_texts(blocks) if t.startswith("…and")]
    assert more == [f"…and {60 - len(actions)} more pending reviews"]
    first = section_texts(blocks)[0]
    assert first.startswith("*<https://app.hubspot.com/contacts/1/deal/9001|Deal 0>* · deal")
    assert "Deal stage: Qualified To Buy → Contract Sent" in first
    assert "…and 1 more change" in first and "From *enrichment-bot* · expires <!date^" in first
    contexts = [blk["elements"][0]["text"] for blk in blocks if blk["type"] == "context"]
    assert any(
        c.startswith(":no_entry_sign: <https://app.hubspot.com/contacts/1/deal/9001|Acme")
        and f" · Rejected by <@{BEN}> at <!date^" in c
        and "stale data" in c
        for c in contexts
    )
    assert contexts[-1] == "…and 20 more"


def test_home_view_when_nothing_is_waiting() -> None:
    home = b.home_view(AVA, [], [], now=NOW)
    check_view(home, "home")
    assert "Nothing waiting for you." in section_texts(home["blocks"])
    assert actions_blocks(home["blocks"]) == []
    assert home["blocks"][-1]["elements"][0]["text"] == "No decisions yet."
    twice = b.home_view(AVA, pending_views(1) * 2, [], now=NOW)  # one entry per proposal
    assert len(actions_blocks(twice["blocks"])) == 1


# --- short texts --------------------------------------------------------------------------------
def test_short_texts() -> None:
    view = review()
    assert b.not_yours_text(view, BEN) == (
        "This review of <https://app.hubspot.com/contacts/1/deal/9001|Acme Corp - Platform"
        f" renewal> belongs to <@{AVA}>: you cannot approve, edit or reject it."
    )
    assert "not assigned to you" in b.not_yours_text(replace(view, reviewer_id=None), BEN)
    approved = replace(
        view, state="decided", decision="approved", decided_by=AVA, decided_at=DECIDED_AT
    )
    assert b.already_decided_text(approved).startswith(f"Already approved by <@{AVA}> at <!date^")
    edited = replace(approved, decision="edited")
    assert b.already_decided_text(edited).startswith(f"Already approved with edits by <@{AVA}>")
    rejected = replace(approved, decision="rejected", reject_reason="no")
    assert b.already_decided_text(rejected).endswith(": no.")
    expired = replace(view, state="expired", decision="expired")
    assert b.already_decided_text(expired).endswith(
        "expired at <!date^"
        + str(int(EXPIRES.timestamp()))
        + "^{date_short_pretty} at {time}|2026-05-01 14:00 UTC> without a decision."
    )
    reminder = b.reminder_text(view, EXPIRES - timedelta(minutes=45))
    assert reminder.startswith("Reminder: 1 change to <https://app.hubspot.com/")
    assert "is waiting for your review; the review expires in 45 minutes (<!date^" in reminder
    assert "expires in about 5 hours" in b.reminder_text(view, EXPIRES - timedelta(hours=5))
    assert "expires now" in b.reminder_text(view, EXPIRES + timedelta(minutes=1))


# --- through slack_sdk to the Slack stand-in ----------------------------------------------------
@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(message_rate=None)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
def client(slack: SlackStandIn) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


def huge_view() -> ReviewView:
    big = "<!channel> &" * 1000
    lines = tuple(
        line(f"c{i}", FieldSpec(f"f{i}", big, "text"), big, big * 2, status="failed", error=big)
        for i in range(80)
    )
    return review(
        *lines,
        record_name=big,
        agent=big,
        reason=big,
        route_note=big,
        evidence=tuple(f"https://e.example/{i}?q={'&' * 500}" for i in range(50)),
    )


async def test_standin_accepts_review_messages_whatever_the_input(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    view = huge_view()
    decided = replace(
        view,
        state="decided",
        decision="rejected",
        decided_by=AVA,
        decided_at=NOW,
        reject_reason="<!channel>" * 1000,
    )
    for item in (review(*all_lines()), view, decided):
        text, blocks = b.review_message(item, now=NOW)
        posted = await client.chat_postMessage(channel=AVA, text=text, blocks=blocks)
        assert posted["ok"]
        stored = slack.message(posted["channel"], posted["ts"])
        assert stored is not None and stored["text"] == text
        assert len(stored["blocks"]) == len(blocks)
    update = await client.chat_update(
        channel=posted["channel"], ts=posted["ts"], text=text, blocks=blocks
    )
    assert update["ok"]


async def test_standin_accepts_the_modals_and_the_home_view(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    heavy = FieldSpec(
        "f",
        "L" * 3000,
        "enumeration",
        tuple((f"{i:03d}" + "v" * 140, "😀" * 80) for i in range(100)),
    )
    heavy_view = review(*(line(f"c{i}", heavy, None, f"{i:03d}" + "v" * 140) for i in range(120)))
    for view in (review(*all_lines()), huge_view(), heavy_view):
        for modal in (
            b.edit_modal(view, private_metadata="m" * 3000),
            b.reject_modal(view, private_metadata="p-1"),
        ):
            opened = await client.views_open(trigger_id=slack.issue_trigger(AVA), view=modal)
            assert opened["ok"] and opened["view"]["callback_id"] == modal["callback_id"]
    home = b.home_view(AVA, pending_views(60) + [huge_view()], recent_views(100), now=NOW)
    published = await client.views_publish(user_id=AVA, view=home)
    assert published["ok"]
    stored = slack.home(AVA)
    assert stored is not None and len(stored["blocks"]) == len(home["blocks"])


async def test_edit_modal_submitted_through_the_standin_parses_back(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    received: list[dict[str, Any]] = []

    async def events(request: web.Request) -> web.Response:
        form = await request.post()
        received.append(json.loads(str(form["payload"])))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        host, port = runner.addresses[0][:2]
        slack.events_url = f"http://{host}:{port}/slack/events"
        lines = all_lines()
        opened = await client.views_open(
            trigger_id=slack.issue_trigger(AVA),
            view=b.edit_modal(review(*lines), private_metadata="p-1"),
        )
        await slack.submit_form(
            AVA,
            opened["view"]["id"],
            {"chg:c1": "Closed Won", "chg:c2": "61000", "chg:c3": "2027-03-15", "chg:c5": ""},
        )
        (payload,) = received
        assert payload["type"] == "view_submission"
        assert payload["view"]["callback_id"] == "review_edit_submit"
        assert payload["view"]["private_metadata"] == "p-1"
        parsed, errors = b.parse_edit_submission(payload["view"]["state"]["values"], lines)
        assert errors == {}
        assert parsed == {
            "c1": "closedwon",  # chosen by its label, submitted as the CRM's value
            "c2": 61000,
            "c3": "2027-03-15",
            "c4": "2026-06-01T00:00:00Z",  # left as proposed (initial values)
            "c5": None,
            "c6": "Renewal of the platform licence,\n3 years.",
            "c7": "true",
        }
    finally:
        await runner.cleanup()
