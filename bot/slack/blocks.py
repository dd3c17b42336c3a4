"""Block Kit for reviews: the review message, the edit and reject modals, the App Home, and the
short texts around them. Pure functions: `ReviewView`s in, dicts and strings out.

Everything that comes from an agent, the CRM or a person is escaped for mrkdwn (`&`, `<`, `>`) so
nobody can inject `<!channel>`, mentions or disguised links, and is clipped (counting UTF-16 code
units, never inside an escape) so that no input can push a message or view past Block Kit's
limits (see API-NOTES.md). The only `<...>` tokens in the output are ours: record and evidence
links to http(s) URLs, `<@U…>` mentions of user ids, and `<!date^…>` dates.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.engine.model import FieldSpec, ReviewLine, ReviewView

JSON = dict[str, Any]

# --- ids the interaction handlers match on ------------------------------------------------------
APPROVE_ACTION = "review_approve"
EDIT_ACTION = "review_edit"
REJECT_ACTION = "review_reject"
EDIT_CALLBACK = "review_edit_submit"
REJECT_CALLBACK = "review_reject_submit"
REVIEW_BLOCK_PREFIX = "review:"  # + proposal id: the actions block of a review message
HOME_BLOCK_PREFIX = "home:"  # + proposal id: the actions block of a pending review in App Home
CHANGE_BLOCK_PREFIX = "chg:"  # + change id: an input block of the edit modal
VALUE_ACTION = "value"  # the action_id of every input in our modals
REASON_BLOCK = "reason"  # the reject modal's reason input

# --- Block Kit limits (API-NOTES.md) ------------------------------------------------------------
MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100
VIEW_BYTES = 200_000  # Slack refuses views over 250 kB (as JSON); keep a margin
SECTION_TEXT = 3000
HEADER_TEXT = 150
BUTTON_VALUE = 2000
ID_LIMIT = 255
OPTIONS_LIMIT = 100
OPTION_TEXT = 75
OPTION_VALUE = 150
INPUT_INITIAL = 3000
METADATA_LIMIT = 3000
FALLBACK_TEXT = 3000
VALUE_PREVIEW = 300  # per value in a message diff
TEXT_MAX = 65_536  # longest text value accepted from the edit modal
REASON_MAX = 2000

EMPTY = "_(empty)_"
ARROW = "→"
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_URL = re.compile(r"https?://[^\s<>|\"'`]+", re.IGNORECASE)
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PENDING = "pending_review"


# --- text primitives ----------------------------------------------------------------------------
def _ulen(text: str) -> int:
    """Length in UTF-16 code units: never less than the code-point count, so safe either way."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _clip_pieces(pieces: Iterable[str], limit: int) -> str:
    """Join pieces (each an unsplittable unit: one character or one escape) to at most `limit`
    UTF-16 units, ending with "…" when something was cut."""
    pieces = list(pieces)
    if sum(_ulen(p) for p in pieces) <= limit:
        return "".join(pieces)
    out: list[str] = []
    used = 0
    for piece in pieces:
        n = _ulen(piece)
        if used + n > limit - 1:
            break
        out.append(piece)
        used += n
    return "".join(out) + "…"


def _flat(value: Any) -> str:
    """A single-line rendering: runs of whitespace (newlines included) become one space."""
    return " ".join(str(value).split())


def clip(text: str, limit: int) -> str:
    """Plain text (no escaping) clipped to `limit`."""
    return _clip_pieces(text, limit)


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def md(value: Any, limit: int, *, multiline: bool = False) -> str:
    """Untrusted text as mrkdwn: escaped, single-line unless `multiline`, clipped to `limit`
    without cutting an escape sequence in half."""
    text = "" if value is None else str(value)
    text = (
        "\n".join(_flat(line) for line in text.splitlines()).strip() if multiline else _flat(text)
    )
    return _clip_pieces((_ESCAPES.get(ch, ch) for ch in text), limit)


def _fit(text: str, limit: int = SECTION_TEXT) -> str:
    """Last line of defence for built mrkdwn: drop whole lines (our tokens never span lines)."""
    if _ulen(text) <= limit:
        return text
    lines = text.split("\n")
    while lines and _ulen("\n".join([*lines, "…"])) > limit:
        lines.pop()
    return "\n".join([*lines, "…"]) if lines else "…"


def _plain(text: str, limit: int = 2000) -> JSON:
    return {"type": "plain_text", "text": clip(_flat(text), limit) or "-", "emoji": True}


def _mrkdwn(text: str, limit: int = SECTION_TEXT) -> JSON:
    # verbatim: Slack applies only our explicit formatting, it does not auto-link or parse names
    return {"type": "mrkdwn", "text": _fit(text, limit) or " ", "verbatim": True}


def _section(text: str) -> JSON:
    return {"type": "section", "text": _mrkdwn(text)}


def _context(text: str) -> JSON:
    return {"type": "context", "elements": [_mrkdwn(text)]}


def _header(text: str) -> JSON:
    return {"type": "header", "text": _plain(text, HEADER_TEXT)}


def _user(user_id: str | None) -> str:
    """A mention for a Slack user id; anything else is shown as escaped text."""
    if user_id and _USER_ID.fullmatch(user_id):
        return f"<@{user_id}>"
    return md(user_id or "someone", 60)


def _link(url: str | None, label: str, *, max_url: int = 500) -> str | None:
    """`<url|label>` (label already mrkdwn) for an http(s) URL that is safe to link, else None."""
    if not url or not _URL.fullmatch(url):
        return None
    escaped = escape(url)
    if _ulen(escaped) > max_url:
        return None
    return f"<{escaped}|{label}>"


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def slack_date(dt: datetime) -> str:
    """A date every reader sees in their own time zone, with a UTC fallback."""
    dt = _utc(dt)
    fallback = dt.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(dt.timestamp())}^{{date_short_pretty}} at {{time}}|{fallback}>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- values -------------------------------------------------------------------------------------
def _as_date(value: Any) -> date | None:
    """YYYY-MM-DD, or the date of an ISO datetime ("2026-12-19T00:00:00.000Z")."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    if len(text) <= 40 and _DATE.match(text):
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
        except ValueError:
            return None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def _number_text(value: Any) -> str | None:
    """A canonical decimal string for a number-like value, else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or len(str(value)) > 40:
        return None
    if number == number.to_integral_value():
        return str(number.quantize(Decimal(1)))
    return format(number.normalize(), "f")


def _bool_label(spec: FieldSpec, flag: bool) -> str:
    key = "true" if flag else "false"
    return spec.option_label(key) or spec.option_label(flag) or ("Yes" if flag else "No")


def _display(value: Any, spec: FieldSpec) -> str | None:
    """How a value reads to a person (raw text, not escaped); None when empty."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if spec.type == "bool":
        flag = _as_bool(value)
        if flag is not None:
            return _bool_label(spec, flag)
    label = spec.option_label(value)
    if label is None and not isinstance(value, str):
        label = spec.option_label(str(value))
    if label:
        return label
    if spec.type == "date":
        day = _as_date(value)
        if day is not None:
            return day.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _val(value: Any, spec: FieldSpec, limit: int = VALUE_PREVIEW) -> str:
    """A value as a single-line mrkdwn preview."""
    shown = _display(value, spec)
    return EMPTY if shown is None else md(shown, limit)


def _activity_parts(value: Any) -> tuple[str | None, str | None, str, str | None]:
    """(kind, subject, body, due) of an activity given as a dict, an object or text."""
    if isinstance(value, Mapping):
        get = value.get
    elif hasattr(value, "body"):

        def get(key: str) -> Any:
            return getattr(value, key, None)

    else:
        return None, None, "" if value is None else str(value), None
    kind, subject, body, due = (get(k) for k in ("kind", "subject", "body", "due"))
    return (
        str(kind) if kind else None,
        str(subject) if subject else None,
        "" if body is None else str(body),
        str(due) if due else None,
    )


def _activity_text(value: Any, *, body_limit: int, multiline: bool) -> str:
    _, subject, body, due = _activity_parts(value)
    parts = []
    if subject:
        parts.append(f"*{md(subject, 200)}*")
    if due:
        parts.append(f"_due {md(due, 40)}_")
    head = " · ".join(parts)
    text = md(body, body_limit, multiline=multiline) or EMPTY
    return f"{head}\n{text}" if head else text


# --- pieces shared by messages and views --------------------------------------------------------
def _title(view: ReviewView, limit: int = HEADER_TEXT) -> str:
    """The record title as mrkdwn, linked to the record when its URL is safe."""
    name = md(view.title, limit) or md(f"{view.object_type} {view.record_id}", limit) or "record"
    return _link(view.record_url, name) or name


def _label(line: ReviewLine, limit: int = 200) -> str:
    return md(line.field.label or line.field.name, limit) or "Field"


def _change(line: ReviewLine, limit: int) -> str:
    """`current → proposed` (or the approved value, marked, after an edit)."""
    if line.kind == "activity":
        return _activity_text(line.proposed, body_limit=limit * 2, multiline=False)
    current = _val(line.current, line.field, limit)
    if line.edited:
        approved = _val(line.approved, line.field, limit)
        proposed = _val(line.proposed, line.field, limit)
        return f"{current} {ARROW} {approved} _(edited; the agent proposed {proposed})_"
    return f"{current} {ARROW} {_val(line.proposed, line.field, limit)}"


def _outcome(line: ReviewLine) -> str | None:
    status = line.status
    text: str | None = None
    if status in ("queued", "committing"):
        text = ":hourglass_flowing_sand: Writing to the CRM…"
    elif status == "committed":
        text = ":white_check_mark: Written to the CRM"
    elif status == "conflict":
        if line.now_value is None and line.error:
            text = f":warning: Conflict: {md(line.error, 500)}; nothing written"
        else:
            now = _val(line.now_value, line.field)
            text = f":warning: Conflict: the CRM now holds {now}; nothing written"
    elif status == "failed":
        why = md(line.error, 500) if line.error else "no reason given"
        text = f":x: Failed: {why}"
    elif status == "rejected":
        text = ":no_entry_sign: Rejected"
    elif status == "expired":
        text = ":hourglass: Expired"
    if line.rolled_back_by:
        undo = f":leftwards_arrow_with_hook: Rolled back by {_user(line.rolled_back_by)}"
        text = f"{text} · {undo}" if text else undo
    return text


def _decision(view: ReviewView) -> str | None:
    if view.state == "expired" or view.decision == "expired":
        return "expired"
    if view.state == "pending":
        return None
    return view.decision or "decided"


_DECISION_EMOJI = {
    "approved": ":white_check_mark:",
    "edited": ":pencil2:",
    "rejected": ":no_entry_sign:",
    "expired": ":hourglass:",
    "decided": ":ballot_box_with_check:",
}
_DECISION_WORDS = {
    "approved": "Approved",
    "edited": "Approved with edits",
    "rejected": "Rejected",
    "decided": "Decided",
}


def _decision_sentence(view: ReviewView, *, when: bool = True, reason_limit: int = 1000) -> str:
    """What became of the review: `Approved by <@U> at …`, `Rejected by <@U> at …: reason`,
    `Expired at … without a decision`; `Waiting for a decision` while pending."""
    kind = _decision(view)
    if kind is None:
        return "Waiting for a decision"
    if kind == "expired":
        at = view.decided_at or view.expires_at
        if at is not None and when:
            return f"Expired at {slack_date(at)} without a decision"
        return "Expired without a decision"
    text = _DECISION_WORDS.get(kind, "Decided")
    if view.decided_by:
        text += f" by {_user(view.decided_by)}"
    if when and view.decided_at:
        text += f" at {slack_date(view.decided_at)}"
    if kind == "rejected" and view.reject_reason and reason_limit:
        text += f": {md(view.reject_reason, reason_limit)}"
    return text


def _buttons(view: ReviewView, block_id: str) -> JSON:
    value = view.proposal_id[:BUTTON_VALUE]

    def button(action_id: str, text: str, style: str | None) -> JSON:
        element: JSON = {
            "type": "button",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": text, "emoji": True},
            "value": value,
        }
        if style:
            element["style"] = style
        return element

    return {
        "type": "actions",
        "block_id": block_id[:ID_LIMIT],
        "elements": [
            button(APPROVE_ACTION, "Approve", "primary"),
            button(EDIT_ACTION, "Edit", None),
            button(REJECT_ACTION, "Reject", "danger"),
        ],
    }


def _size(blocks: Sequence[JSON]) -> int:
    return len(json.dumps(blocks))  # ASCII-escaped, as the stand-in measures: an upper bound


def _fill(
    groups: Iterable[list[JSON]],
    total: int,
    *,
    room: int,
    more: Callable[[int], JSON],
    byte_room: int | None = None,
) -> list[JSON]:
    """Take whole groups of blocks while they fit in `room` blocks (and `byte_room` bytes),
    keeping space for a final `more(n)` block naming the groups left out."""
    out: list[JSON] = []
    used = shown = 0
    for group in groups:
        reserve = 0 if shown == total - 1 else 1
        cost = _size(group) if byte_room is not None else 0
        if len(out) + len(group) + reserve > room or (
            byte_room is not None and used + cost > byte_room - 1000
        ):
            break
        out.extend(group)
        used += cost
        shown += 1
    if shown < total:
        out.append(more(total - shown))
    return out


def _more(noun: str) -> Callable[[int], JSON]:
    return lambda n: _section(f"…and {_plural(n, noun)}")


# --- 1. the review message ----------------------------------------------------------------------
def review_message(view: ReviewView, *, now: datetime) -> tuple[str, list[JSON]]:
    """(text fallback, blocks) for the owner's DM or the fallback channel."""
    head = [_header(clip(_flat(view.title), HEADER_TEXT) or "Review")]
    intro = [
        f"{_title(view)} · {md(view.object_type, 100)}",
        f"*Proposed by* {md(view.agent, 100) or 'an agent'}",
    ]
    if view.reason:
        intro.append(f"*Reason:* {md(view.reason, 1500)}")
    head.append(_section("\n".join(intro)))
    if view.evidence:
        head.append(_section(_evidence(view.evidence)))
    facts = []
    if view.run_id:
        facts.append(f"Run `{md(view.run_id.replace('`', ''), 100)}`")
    if view.expires_at and _decision(view) is None:
        verb = "Expires" if _utc(view.expires_at) > _utc(now) else "Expired"
        facts.append(f"{verb} {slack_date(view.expires_at)}")
    if facts:
        head.append(_context(" · ".join(facts)))
    if view.route_note:
        note = md(view.route_note, 500)
        head.append(_context(f":information_source: Sent to this channel: {note}"))
    head.append({"type": "divider"})

    decided = _decision(view)
    if decided is None:
        tail = [_buttons(view, f"{REVIEW_BLOCK_PREFIX}{view.proposal_id}")]
    else:
        emoji = _DECISION_EMOJI.get(decided, ":ballot_box_with_check:")
        tail = [_context(f"{emoji} {_decision_sentence(view)}")]

    def line_blocks() -> Iterable[list[JSON]]:
        for line in view.lines:
            text = f"*{_label(line)}*\n{_change(line, VALUE_PREVIEW)}"
            outcome = _outcome(line) if decided is not None else None
            yield [_section(f"{text}\n{outcome}" if outcome else text)]

    if view.lines:
        body = _fill(
            line_blocks(),
            len(view.lines),
            room=MESSAGE_BLOCKS - len(head) - len(tail),
            more=_more("more change"),
        )
    else:
        body = [_section("_No changes in this proposal._")]
    return _fallback(view), head + body + tail


def _evidence(evidence: Sequence[str], shown: int = 5) -> str:
    items = []
    for item in evidence[:shown]:
        text = str(item).strip()
        display = md(re.sub(r"^https?://", "", text, flags=re.IGNORECASE), 60)
        items.append(f"• {_link(text, display, max_url=400) or '“' + md(text, 200) + '”'}")
    if len(evidence) > shown:
        items.append(f"…and {len(evidence) - shown} more")
    return "*Evidence:*\n" + "\n".join(items)


def _fallback(view: ReviewView) -> str:
    """The notification text: who proposes what on which record, or what became of it."""
    title = md(view.title, HEADER_TEXT) or "a record"
    if view.lines:
        first = view.lines[0]
        what = f"{_label(first, 100)}: {_change_short(first, 100)}"
        if len(view.lines) > 1:
            what += f" and {_plural(len(view.lines) - 1, 'more change')}"
    else:
        what = "no changes"
    decided = _decision(view)
    if decided is None:
        text = f"Review needed: agent {md(view.agent, 80)} proposes {what} on {title}"
    else:
        text = f"{_decision_sentence(view, when=False, reason_limit=0)}: {what} on {title}"
    return _fit(text, FALLBACK_TEXT)


def _change_short(line: ReviewLine, limit: int) -> str:
    if line.kind == "activity":
        _, subject, body, _ = _activity_parts(line.proposed)
        return md(subject or body, limit) or EMPTY
    after = line.approved if line.edited else line.proposed
    return f"{_val(line.current, line.field, limit)} {ARROW} {_val(after, line.field, limit)}"


# --- 2. the edit modal --------------------------------------------------------------------------
def _check_metadata(private_metadata: str) -> str:
    if len(private_metadata) > METADATA_LIMIT:
        raise ValueError(f"private_metadata is {len(private_metadata)} chars; Slack allows 3000")
    return private_metadata


def _modal(title: str, submit: str, callback_id: str, metadata: str, blocks: list[JSON]) -> JSON:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": _plain(title, 24),
        "submit": _plain(submit, 24),
        "close": _plain("Cancel", 24),
        "private_metadata": _check_metadata(metadata),
        "blocks": blocks,
    }


def _option(value: str, label: str) -> JSON:
    return {"text": _plain(label or value, OPTION_TEXT), "value": value}


def _select_options(spec: FieldSpec) -> list[JSON] | None:
    """The spec's options as Slack options, or None when Slack cannot show them all."""
    seen: dict[str, JSON] = {}
    for value, label in spec.options:
        value = str(value)
        if not value or len(value) > OPTION_VALUE:
            return None
        seen.setdefault(value, _option(value, str(label)))
    if not seen or len(seen) > OPTIONS_LIMIT:
        return None
    return list(seen.values())


def _initial_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text and len(text) <= INPUT_INITIAL else None


def _element(spec: FieldSpec, proposed: Any) -> tuple[JSON, str | None, bool]:
    """(element, hint, optional) for a field, typed from its spec."""
    kind = spec.type
    element: JSON
    if kind in ("enumeration", "bool"):
        if kind == "bool":
            options = [
                _option("true", _bool_label(spec, True)),
                _option("false", _bool_label(spec, False)),
            ]
            flag = _as_bool(proposed) if proposed is not None else None
            chosen = None if flag is None else ("true" if flag else "false")
        else:
            options = _select_options(spec) or []
            chosen = None if proposed is None else str(proposed)
        if options:
            element = {
                "type": "static_select",
                "action_id": VALUE_ACTION,
                "placeholder": _plain("Choose a value", 150),
                "options": options,
            }
            initial = next((o for o in options if o["value"] == chosen), None)
            if initial is not None:
                element["initial_option"] = initial
            return element, None, False
        # too many options (or too long) for a select: type the CRM's value
        element = {"type": "plain_text_input", "action_id": VALUE_ACTION, "max_length": 3000}
        initial_text = _initial_text(proposed)
        if initial_text is not None:
            element["initial_value"] = initial_text
        values = ", ".join(str(v) for v, _ in spec.options)
        hint = "Type one of the CRM's values for this field"
        hint = clip(f"{hint}: {values}" if values else hint + ".", 2000)
        return element, hint, False
    if kind in ("date", "datetime"):
        element = {
            "type": "datepicker",
            "action_id": VALUE_ACTION,
            "placeholder": _plain("Choose a date", 150),
        }
        day = _as_date(proposed)
        if day is not None:
            element["initial_date"] = day.isoformat()
        hint = "The time is set to 00:00 UTC." if kind == "datetime" else None
        return element, hint, False
    if kind == "number":
        element = {"type": "number_input", "action_id": VALUE_ACTION, "is_decimal_allowed": True}
        number = _number_text(proposed)
        if number is not None:
            element["initial_value"] = number
        return element, None, False
    element = {"type": "plain_text_input", "action_id": VALUE_ACTION, "max_length": 3000}
    initial_text = _initial_text(proposed)
    if kind == "text" or (initial_text is not None and "\n" in initial_text):
        element["multiline"] = True
    if initial_text is not None:
        element["initial_value"] = initial_text
    return element, "Leave empty to clear the field.", True


def _edit_blocks(line: ReviewLine) -> list[JSON]:
    spec = line.field
    if line.kind == "activity":
        body = _activity_text(line.proposed, body_limit=2500, multiline=True)
        return [_section(f"*{_label(line)}* _(created as proposed; not editable here)_\n{body}")]
    proposed = line.proposed
    if spec.type not in ("date", "datetime", "number", "bool") and proposed is not None:
        length = len(str(proposed))
        if length > INPUT_INITIAL:  # Slack's inputs take at most 3000 characters
            preview = md(proposed, VALUE_PREVIEW)
            note = f"too long to edit in Slack ({length:,} characters); approved as proposed"
            return [_section(f"*{_label(line)}* _({note})_\n{preview}")]
    element, hint, optional = _element(spec, proposed)
    block: JSON = {
        "type": "input",
        "block_id": f"{CHANGE_BLOCK_PREFIX}{line.change_id}"[:ID_LIMIT],
        "label": _plain(spec.label or spec.name or "Value", 2000),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint, 2000)
    return [block]


def _pending_lines(view: ReviewView) -> list[ReviewLine]:
    seen: set[str] = set()
    lines = []
    for line in view.lines:
        if line.status == _PENDING and line.change_id not in seen:
            seen.add(line.change_id)
            lines.append(line)
    return lines


def edit_modal(view: ReviewView, *, private_metadata: str) -> JSON:
    """The "Edit and approve" modal: one input per pending field change, typed from its spec."""
    lines = [line for line in _pending_lines(view) if line.kind in ("field", "activity")]
    head = [
        _context(
            f"Changes to {_title(view)} ({md(view.object_type, 100)}) proposed by"
            f" *{md(view.agent, 100) or 'an agent'}*. Approving writes the values below."
        )
    ]
    body = _fill(
        (_edit_blocks(line) for line in lines),
        len(lines),
        room=VIEW_BLOCKS - len(head),
        byte_room=VIEW_BYTES - _size(head),
        more=lambda n: _section(
            f"…and {_plural(n, 'more change')} not shown here: approved as proposed."
        ),
    )
    if not lines:
        body = [_section("_Nothing left to review._")]
    return _modal("Edit and approve", "Approve", EDIT_CALLBACK, private_metadata, head + body)


# --- 3. reading the edit modal back -------------------------------------------------------------
def _submitted(state: Mapping[str, Any]) -> Any:
    if "selected_option" in state:
        option = state["selected_option"]
        if option is None:
            return None
        return option.get("value") if isinstance(option, Mapping) else _BAD
    if "selected_date" in state:
        return state["selected_date"]
    if "value" in state:
        return state["value"]
    return None


_BAD = object()


def _coerce(raw: Any, spec: FieldSpec) -> Any:
    """The submitted value as the engine wants it; ValueError(message for the user)."""
    if raw is _BAD or (raw is not None and not isinstance(raw, str)):
        raise ValueError("Invalid value.")
    empty = raw is None or raw.strip() == ""
    kind = spec.type
    if kind not in ("enumeration", "bool", "number", "date", "datetime"):  # string, text
        if empty:
            return None
        if len(raw) > TEXT_MAX:
            raise ValueError(f"Too long: at most {TEXT_MAX:,} characters.")
        return raw
    if empty:
        raise ValueError("Enter a number." if kind == "number" else "Choose a value.")
    assert raw is not None
    if kind == "enumeration":
        raw = raw.strip()
        if spec.options and raw not in {str(v) for v, _ in spec.options}:
            raise ValueError("Choose one of the CRM's values for this field.")
        if len(raw) > TEXT_MAX:
            raise ValueError(f"Too long: at most {TEXT_MAX:,} characters.")
        return raw
    if kind == "bool":
        if raw not in ("true", "false"):
            raise ValueError("Choose a value.")
        return raw
    if kind == "number":
        text = raw.strip()
        try:
            number = Decimal(text) if len(text) <= 40 else None
        except (InvalidOperation, ValueError):
            number = None
        if number is None or not number.is_finite() or number.adjusted() > 30:
            raise ValueError("Enter a number.")
        if number == number.to_integral_value():
            # Beyond 64 bits the ledger (SQLite) and the CRM's number fields would round it.
            if not -(2**63) <= int(number) < 2**63:
                raise ValueError("Enter a number of at most 18 digits.")
            return int(number)
        return float(number)
    if not _DATE.fullmatch(raw):
        raise ValueError("Enter a date as YYYY-MM-DD.")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise ValueError("Enter a date as YYYY-MM-DD.") from None
    return f"{day.isoformat()}T00:00:00Z" if kind == "datetime" else day.isoformat()


def parse_edit_submission(
    values: Mapping[str, Any], lines: Sequence[ReviewLine]
) -> tuple[dict[str, Any], dict[str, str]]:
    """({change_id: value}, {block_id: error}) from `view["state"]["values"]` of the edit modal.
    Only pending field changes can be set; anything else is reported under its block id."""
    editable = {
        f"{CHANGE_BLOCK_PREFIX}{line.change_id}"[:ID_LIMIT]: line
        for line in lines
        if line.kind == "field" and line.status == _PENDING
    }
    result: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if not isinstance(values, Mapping):
        return result, errors
    for block_id, actions in values.items():
        line = editable.get(block_id)
        if line is None:
            errors[str(block_id)] = "This change is not waiting for review."
            continue
        state = actions.get(VALUE_ACTION) if isinstance(actions, Mapping) else None
        if not isinstance(state, Mapping):
            errors[block_id] = "Invalid value."
            continue
        try:
            result[line.change_id] = _coerce(_submitted(state), line.field)
        except ValueError as e:
            errors[block_id] = str(e)
    return result, errors


# --- 4. the reject modal ------------------------------------------------------------------------
def reject_modal(view: ReviewView, *, private_metadata: str) -> JSON:
    lines = _pending_lines(view) or list(view.lines)
    summary = [
        f"Reject {_plural(len(lines), 'change')} to {_title(view)} proposed by"
        f" *{md(view.agent, 100) or 'an agent'}*? Nothing is written to the CRM."
    ]
    shown = 8
    for line in lines[:shown]:
        summary.append(f"• *{_label(line, 80)}*: {_change_short(line, 60)}")
    if len(lines) > shown:
        summary.append(f"…and {_plural(len(lines) - shown, 'more change')}")
    reason = {
        "type": "input",
        "block_id": REASON_BLOCK,
        "optional": True,
        "label": _plain("Reason (optional)"),
        "hint": _plain("Recorded with the decision."),
        "element": {
            "type": "plain_text_input",
            "action_id": VALUE_ACTION,
            "multiline": True,
            "max_length": REASON_MAX,
        },
    }
    blocks = [_section("\n".join(summary)), reason]
    return _modal("Reject changes", "Reject", REJECT_CALLBACK, private_metadata, blocks)


def parse_reject_submission(values: Mapping[str, Any]) -> str | None:
    """The reason typed into the reject modal, or None."""
    block = values.get(REASON_BLOCK) if isinstance(values, Mapping) else None
    state = block.get(VALUE_ACTION) if isinstance(block, Mapping) else None
    text = state.get("value") if isinstance(state, Mapping) else None
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip()[:REASON_MAX]


# --- 5. App Home --------------------------------------------------------------------------------
def _home_item(view: ReviewView, now: datetime) -> list[JSON]:
    lines = [f"*{_title(view)}* · {md(view.object_type, 60)}"]
    for line in view.lines[:3]:
        lines.append(f"{_label(line, 80)}: {_change_short(line, 80)}")
    if len(view.lines) > 3:
        lines.append(f"…and {_plural(len(view.lines) - 3, 'more change')}")
    who = f"From *{md(view.agent, 80) or 'an agent'}*"
    if view.expires_at:
        verb = "expires" if _utc(view.expires_at) > _utc(now) else "expired"
        who += f" · {verb} {slack_date(view.expires_at)}"
    lines.append(who)
    return [_section("\n".join(lines)), _buttons(view, f"{HOME_BLOCK_PREFIX}{view.proposal_id}")]


def _recent_item(view: ReviewView) -> list[JSON]:
    kind = _decision(view)
    emoji = _DECISION_EMOJI.get(kind or "", ":hourglass_flowing_sand:")
    return [_context(f"{emoji} {_title(view)} · {_decision_sentence(view, reason_limit=200)}")]


def home_view(
    user_id: str,
    pending: Sequence[ReviewView],
    recent: Sequence[ReviewView],
    *,
    now: datetime,
    recent_shown: int = 20,
) -> JSON:
    """The App Home for views.publish: pending reviews with buttons, then recent decisions."""
    unique: dict[str, ReviewView] = {}
    for view in pending:  # block ids must be unique: one entry per proposal
        unique.setdefault(view.proposal_id, view)
    todo = list(unique.values())
    head = [
        _context(f"Reviews for {_user(user_id)} · updated {slack_date(now)}"),
        _header("Pending reviews"),
    ]
    if recent:
        done = list(recent[:recent_shown])
        recent_blocks = _fill(
            (_recent_item(v) for v in done),
            len(recent),
            room=len(done) + 1,
            more=lambda n: _context(f"…and {n} more"),
        )
    else:
        recent_blocks = [_context("No decisions yet.")]
    recent_part = [{"type": "divider"}, _header("Recent decisions"), *recent_blocks]
    if todo:
        pending_blocks = _fill(
            (_home_item(v, now) for v in todo),
            len(todo),
            room=VIEW_BLOCKS - len(head) - len(recent_part),
            byte_room=VIEW_BYTES - _size(head) - _size(recent_part),
            more=_more("more pending review"),
        )
    else:
        pending_blocks = [_section("Nothing waiting for you.")]
    return {"type": "home", "blocks": head + pending_blocks + recent_part}


# --- 6. short texts -----------------------------------------------------------------------------
def not_yours_text(view: ReviewView, user_id: str) -> str:
    """Ephemeral answer to someone clicking a review that is not theirs."""
    title = _title(view)
    if view.reviewer_id and view.reviewer_id != user_id:
        return (
            f"This review of {title} belongs to {_user(view.reviewer_id)}: you cannot approve,"
            " edit or reject it."
        )
    return f"This review of {title} is not assigned to you: you cannot approve, edit or reject it."


def already_decided_text(view: ReviewView) -> str:
    kind = _decision(view)
    if kind is None:
        return f"This review of {_title(view)} is still waiting for a decision."
    if kind == "expired":
        sentence = _decision_sentence(view)
        return f"This review of {_title(view)} {sentence[0].lower()}{sentence[1:]}."
    sentence = _decision_sentence(view, reason_limit=300)
    return f"Already {sentence[0].lower()}{sentence[1:]}."


def reminder_text(view: ReviewView, now: datetime) -> str:
    """A nudge for a review nobody has decided yet."""
    count = _plural(len(_pending_lines(view)) or len(view.lines), "change")
    text = (
        f"Reminder: {count} to {_title(view)} proposed by agent"
        f" {md(view.agent, 80) or 'an agent'} {'is' if count.startswith('1 ') else 'are'}"
        " waiting for your review"
    )
    if view.expires_at is None:
        return text + "."
    minutes = max(0, math.ceil((_utc(view.expires_at) - _utc(now)).total_seconds() / 60))
    if minutes == 0:
        left = "now"
    elif minutes < 120:
        left = f"in {_plural(minutes, 'minute')}"
    else:
        left = f"in about {_plural(round(minutes / 60), 'hour')}"
    return f"{text}; the review expires {left} ({slack_date(view.expires_at)})."


# --- /crm-rollback ------------------------------------------------------------------------------
ROLLBACK_CONFIRM = "rollback_confirm"
ROLLBACK_INCLUDE_CONFLICTS = "rollback_include_conflicts"
ROLLBACK_CONFIRM_FORCE = "rollback_confirm_force"
ROLLBACK_CANCEL = "rollback_cancel"
_VERDICTS = {
    "revert": ":leftwards_arrow_with_hook: will be reverted",
    "conflict": ":warning: conflict: a person changed it since; left alone",
    "already": ":white_check_mark: already holds the old value",
    "missing": ":grey_question: record not found",
}
ROLLBACK_ITEMS_SHOWN = 30


def _button(text: str, action_id: str, value: str, style: str | None = None) -> JSON:
    button: JSON = {"type": "button", "text": _plain(text, 75), "action_id": action_id, "value": value}
    if style:
        button["style"] = style
    return button


def _rollback_item(item: Any) -> str:
    where = f"{md(item.object_type, 60)} {md(item.record_id, 64)} · `{md(item.field, 100)}`"
    if item.kind == "activity":
        return f"{where}: the {md(item.field, 20)} the agent created will be deleted"
    return (
        f"{where}: now {md(_flat(str(item.now)) if item.now is not None else '(empty)', 120)} "
        f"{ARROW} restore {md(item.restore if item.restore is not None else '(empty)', 120)}"
        f"\n{_VERDICTS[item.verdict]}"
    )


def rollback_preview(plan: Any) -> tuple[str, list[JSON]]:
    """The answer to `/crm-rollback TARGET`: what would be reverted, and the buttons."""
    reverts, conflicts = plan.count("revert"), plan.count("conflict")
    summary = (
        f"*Rollback preview* for `{md(plan.target, 200)}`: {reverts} to revert, {conflicts} conflict(s), "
        f"{plan.count('already')} already reverted, {plan.count('missing')} missing."
    )
    blocks: list[JSON] = [_section(summary), {"type": "divider"}]
    shown = list(plan.items)[:ROLLBACK_ITEMS_SHOWN]
    blocks += [_section(_rollback_item(item)) for item in shown]
    if len(plan.items) > len(shown):
        blocks.append(_context(f"…and {len(plan.items) - len(shown)} more."))
    buttons = []
    if reverts:
        buttons.append(_button(f"Confirm: revert {reverts}", ROLLBACK_CONFIRM, plan.id, "primary"))
    if conflicts:
        buttons.append(_button("Include conflicts too…", ROLLBACK_INCLUDE_CONFLICTS, plan.id))
    buttons.append(_button("Cancel", ROLLBACK_CANCEL, plan.id))
    blocks.append({"type": "actions", "block_id": f"rollback:{plan.id}", "elements": buttons})
    return f"Rollback preview for {clip(plan.target, 200)}: {reverts} to revert, {conflicts} conflict(s)", blocks


def rollback_force_confirm(rollback_id: str, conflicts: int) -> tuple[str, list[JSON]]:
    """The second confirmation before overwriting values people set since the agent's write."""
    text = (
        f":warning: Including conflicts overwrites {conflicts} value(s) that people set after the agent "
        "wrote them. Their edits will be lost (the rollback itself can be rolled back)."
    )
    return text, [
        _section(text),
        {
            "type": "actions",
            "block_id": f"rollback-force:{rollback_id}",
            "elements": [
                _button("Yes, overwrite them too", ROLLBACK_CONFIRM_FORCE, rollback_id, "danger"),
                _button("Cancel", ROLLBACK_CANCEL, rollback_id),
            ],
        },
    ]


def rollback_result(status: Mapping[str, Any]) -> tuple[str, list[JSON]]:
    if not status["settled"]:
        text = f":hourglass_flowing_sand: Rolling back `{md(status['target'], 200)}`: {status['reverted']} of {status['total']} reverted so far…"
        return clip(text, FALLBACK_TEXT), [_section(text)]
    text = (
        f":rewind: Rolled back `{md(status['target'], 200)}` ({md(status['id'], 40)}): "
        f"*{status['reverted']}* reverted, *{status['conflicts']}* conflict(s) left alone, "
        f"*{status['failed']}* failed."
    )
    blocks = [_section(text)]
    for failure in list(status.get("failures") or [])[:20]:
        blocks.append(_context(f"`{md(failure['field'], 100)}` ({md(failure['change_id'], 40)}): {md(failure['error'], 500)}"))
    blocks.append(_context(f"Undo this rollback with `/crm-rollback {md(status['id'], 40)}`."))
    return clip(text, FALLBACK_TEXT), blocks
