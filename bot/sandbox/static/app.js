// The sandbox page: an agent panel, a Slack panel (as one chosen user) and a CRM panel.
// Plain JS, no build step. Everything the page shows comes from /sandbox/api/... and is polled
// every second; every action goes through the same paths real Slack and real agents use.
"use strict";

const API = "/sandbox/api";
const POLL_MS = 1000;

const state = {
  config: null,
  user: null,
  tab: "dm",
  key: null,
  slack: null,
  slackJson: "",
  crm: null,
  crmJson: "",
  selected: null, // "deals/9001"
  history: null,
  historyJson: "",
  modalKey: "",
  lastProposal: null, // id of the proposal sent last, polled through GET /v1/proposals/{id}
  seenValues: new Map(), // "deals/9001/dealstage" -> value, to flash what changed
};

// --- tiny DOM helpers ---------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "html") el.innerHTML = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(path, options = {}) {
  const resp = await fetch(path, {
    ...options,
    headers: { "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const text = await resp.text();
  let body;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  return { status: resp.status, ok: resp.ok, body };
}

const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}) });

function newKey() {
  const rnd = crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(16).slice(2) + Date.now();
  return "page-" + rnd;
}

function clock(value) {
  if (!value) return "";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(d) ? String(value) : d.toLocaleTimeString();
}

// --- Slack mrkdwn -------------------------------------------------------------------------------
const EMOJI = {
  white_check_mark: "✅", x: "❌", warning: "⚠️", no_entry_sign: "🚫", no_entry: "⛔",
  hourglass: "⌛", hourglass_flowing_sand: "⏳", information_source: "ℹ️",
  leftwards_arrow_with_hook: "↩️", ballot_box_with_check: "☑️", rotating_light: "🚨",
  bell: "🔔", memo: "📝", heavy_check_mark: "✔️", eyes: "👀", arrows_counterclockwise: "🔄",
  red_circle: "🔴", large_green_circle: "🟢", robot_face: "🤖", lock: "🔒", wastebasket: "🗑️",
  rewind: "⏪", fast_forward: "⏩", arrow_right: "➡️", mag: "🔍", clipboard: "📋", stopwatch: "⏱️",
  heavy_multiplication_x: "✖️", recycle: "♻️", pushpin: "📌", tada: "🎉", thumbsup: "👍",
};
const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
const unescapeSlack = (s) => String(s).replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
const emojify = (html) => html.replace(/:([a-z0-9_+-]+):/g, (m, name) => EMOJI[name] || m);

function userName(id) {
  const person = state.config?.people.find((p) => p.id === id);
  if (person) return person.name;
  if (id === state.config?.bot_user_id) return "CRM Gate";
  return id;
}

function slackToken(inner) {
  const bar = inner.indexOf("|");
  const target = bar < 0 ? inner : inner.slice(0, bar);
  const label = bar < 0 ? "" : inner.slice(bar + 1);
  if (target.startsWith("@")) {
    return `<span class="mention">@${escapeHtml(label || userName(target.slice(1)))}</span>`;
  }
  if (target.startsWith("#")) {
    return `<span class="mention">#${escapeHtml(unescapeSlack(label || target.slice(1)))}</span>`;
  }
  if (target.startsWith("!date^")) {
    const epoch = Number(target.split("^")[1]);
    const text = label ? unescapeSlack(label) : new Date(epoch * 1000).toLocaleString();
    return `<span class="date" title="${escapeHtml(new Date(epoch * 1000).toLocaleString())}">${escapeHtml(text)}</span>`;
  }
  if (target.startsWith("!")) {
    return `<span class="mention">@${escapeHtml(unescapeSlack(label || target.slice(1).split("^")[0]))}</span>`;
  }
  const url = unescapeSlack(target);
  if (/^(https?:|mailto:)/i.test(url)) {
    const text = label ? unescapeSlack(label) : url;
    return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(text)}</a>`;
  }
  return escapeHtml("<" + unescapeSlack(inner) + ">");
}

function mrkdwn(text) {
  const kept = [];
  const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
  let s = String(text ?? "");
  s = s.replace(/<([^<>\n]+)>/g, (m, inner) => keep(slackToken(inner)));
  s = s.replace(/```([\s\S]+?)```/g, (m, code) => keep(`<pre>${escapeHtml(unescapeSlack(code))}</pre>`));
  s = s.replace(/`([^`\n]+)`/g, (m, code) => keep(`<code>${escapeHtml(unescapeSlack(code))}</code>`));
  s = escapeHtml(unescapeSlack(s));
  s = s.replace(/(^|[^\w*])\*(?=\S)([^*\n]*?\S)\*(?!\w)/g, "$1<b>$2</b>");
  s = s.replace(/(^|[^\w_])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<i>$2</i>");
  s = s.replace(/(^|[^\w~])~(?=\S)([^~\n]*?\S)~(?!\w)/g, "$1<s>$2</s>");
  s = emojify(s).replace(/\n/g, "<br>");
  return s.replace(/\u0000(\d+)\u0000/g, (m, i) => kept[Number(i)]);
}

const plain = (obj) => {
  const html = escapeHtml(obj?.text ?? "");
  return obj?.emoji === false ? html : emojify(html);
};
const textHtml = (obj) => (obj?.type === "mrkdwn" ? mrkdwn(obj.text) : plain(obj));

// --- Block Kit ----------------------------------------------------------------------------------
// ctx: {onButton(block, element)} for messages and App Home; {inputs: true} for modals.
function renderBlocks(blocks, ctx) {
  return (blocks || []).map((block) => renderBlock(block, ctx));
}

function renderBlock(block, ctx) {
  switch (block.type) {
    case "header":
      return h("div", { class: "bk-header", html: plain(block.text) });
    case "section": {
      const el = h("div", { class: "bk-section", "data-block-id": block.block_id });
      const main = h("div", { class: "bk-section-main" });
      if (block.text) main.append(h("div", { class: "bk-text", html: textHtml(block.text) }));
      if (block.fields) {
        main.append(h("div", { class: "bk-fields" },
          block.fields.map((f) => h("div", { class: "bk-field", html: textHtml(f) }))));
      }
      el.append(main);
      if (block.accessory) el.append(renderElement(block, block.accessory, ctx));
      return el;
    }
    case "context":
      return h("div", { class: "bk-context" }, (block.elements || []).map((e) =>
        e.type === "image"
          ? h("span", { class: "bk-image-alt" }, `[${e.alt_text || "image"}]`)
          : h("span", { html: textHtml(e) })));
    case "divider":
      return h("hr", { class: "bk-divider" });
    case "actions":
      return h("div", { class: "bk-actions", "data-block-id": block.block_id },
        (block.elements || []).map((e) => renderElement(block, e, ctx)));
    case "input":
      return renderInput(block);
    case "markdown":
      return h("div", { class: "bk-section", html: mrkdwn(block.text) });
    case "image":
      return h("div", { class: "bk-image-alt" }, `[image: ${block.alt_text || ""}]`);
    default:
      return h("div", { class: "bk-unknown" }, `[${block.type} block]`);
  }
}

function renderElement(block, element, ctx) {
  if (element.type !== "button") {
    return h("span", { class: "bk-unknown" }, `[${element.type}]`);
  }
  const style = element.style ? ` ${element.style}` : "";
  return h("button", {
    type: "button",
    class: "bk-button" + style,
    "data-testid": `btn-${element.action_id}`,
    "data-action-id": element.action_id,
    "data-block-id": block.block_id,
    onclick: async (ev) => {
      if (element.url) window.open(element.url, "_blank", "noopener");
      if (!ctx?.onButton) return;
      if (element.confirm && !(await confirmDialog(element.confirm))) return;
      ev.target.disabled = true;
      try { await ctx.onButton(block, element); } finally { ev.target.disabled = false; }
    },
  }, h("span", { html: plain(element.text) }));
}

// Slack's confirmation dialog for a button with a `confirm` object.
function confirmDialog(confirm) {
  return new Promise((resolve) => {
    const root = $("#confirm-root");
    const done = (answer) => { root.replaceChildren(); resolve(answer); };
    root.replaceChildren(h("div", { class: "overlay" },
      h("div", { class: "modal small", "data-testid": "confirm-dialog" },
        h("div", { class: "modal-title", html: plain(confirm.title) }),
        h("div", { class: "modal-body", html: textHtml(confirm.text) }),
        h("div", { class: "modal-foot" },
          h("button", { type: "button", "data-testid": "confirm-no", onclick: () => done(false) },
            confirm.deny?.text || "Cancel"),
          h("button", { type: "button", class: "bk-button " + (confirm.style || "primary"),
            "data-testid": "confirm-yes", onclick: () => done(true) }, confirm.confirm?.text || "Confirm")))));
  });
}

// --- modals -------------------------------------------------------------------------------------
function renderInput(block) {
  const el = block.element || {};
  const id = `input-${block.block_id}`;
  let control;
  switch (el.type) {
    case "plain_text_input":
      control = el.multiline ? h("textarea", { rows: 4 }) : h("input", { type: "text" });
      control.value = el.initial_value ?? "";
      if (el.max_length) control.maxLength = el.max_length;
      break;
    case "number_input":
      control = h("input", { type: "number", step: el.is_decimal_allowed ? "any" : "1" });
      control.value = el.initial_value ?? "";
      break;
    case "datepicker":
      control = h("input", { type: "date" });
      control.value = el.initial_date ?? "";
      break;
    case "static_select": {
      const options = [...(el.options || []), ...(el.option_groups || []).flatMap((g) => g.options || [])];
      control = h("select", {},
        h("option", { value: "" }, el.placeholder?.text || "Choose…"),
        options.map((o) => h("option", { value: o.value }, o.text?.text ?? o.value)));
      control.value = el.initial_option?.value ?? "";
      break;
    }
    default:
      control = h("input", { type: "text", disabled: true, value: `[${el.type} is not supported here]` });
  }
  control.id = id;
  control.dataset.blockId = block.block_id;
  control.dataset.kind = el.type;
  control.dataset.optional = block.optional ? "1" : "";
  control.setAttribute("data-testid", id);
  control.setAttribute("name", block.block_id);
  return h("div", { class: "bk-input", "data-block-id": block.block_id },
    h("label", { for: id, class: "bk-label" }, block.label?.text || block.block_id,
      block.optional ? h("span", { class: "optional" }, " (optional)") : null),
    control,
    block.hint ? h("div", { class: "bk-hint", html: plain(block.hint) }) : null,
    h("div", { class: "bk-error", "data-testid": `error-${block.block_id}`, hidden: true }));
}

function renderModal(views) {
  const root = $("#modal-root");
  const view = views && views.length ? views[views.length - 1] : null;
  const key = view ? `${state.user}:${view.id}:${view.hash}` : "";
  if (key === state.modalKey) return; // keep what the user typed
  state.modalKey = key;
  if (!view) { root.replaceChildren(); return; }
  const form = h("form", { class: "modal", "data-testid": "modal", "data-view-id": view.id,
    "data-callback-id": view.callback_id || "", novalidate: true });
  const topError = h("div", { class: "bk-error top", "data-testid": "modal-error", hidden: true });
  form.append(
    h("div", { class: "modal-title", "data-testid": "modal-title", html: plain(view.title) }),
    h("div", { class: "modal-body" }, topError, renderBlocks(view.blocks, { onButton: null })),
    h("div", { class: "modal-foot" },
      h("button", { type: "button", "data-testid": "modal-cancel", onclick: () => closeModal(view) },
        view.close?.text || "Cancel"),
      view.submit ? h("button", { type: "submit", class: "bk-button primary", "data-testid": "modal-submit" },
        view.submit.text) : null));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submitModal(form, view, topError); });
  root.replaceChildren(h("div", { class: "overlay" }, form));
  form.querySelector("input, textarea, select")?.focus();
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

async function submitModal(form, view, topError) {
  const fields = {};
  let missing = false;
  for (const control of form.querySelectorAll("[data-block-id][data-kind]")) {
    const value = control.value.trim() === "" ? null : control.value;
    const errorEl = form.querySelector(`[data-testid="error-${CSS.escape(control.dataset.blockId)}"]`);
    if (value === null && !control.dataset.optional) {
      showError(errorEl, "Please fill out this field.");
      missing = true;
      continue;
    }
    showError(errorEl, "");
    fields[control.dataset.blockId] = value;
  }
  showError(topError, "");
  if (missing) return;
  const submit = form.querySelector('[data-testid="modal-submit"]');
  if (submit) submit.disabled = true;
  try {
    const { body } = await post(`${API}/slack/${state.user}/submit`, { view_id: view.id, fields });
    if (!body?.ok) { showError(topError, body?.error || "The app did not accept the submission."); return; }
    const answer = body.answer || {};
    if (answer.response_action === "errors") {
      for (const [blockId, message] of Object.entries(answer.errors || {})) {
        const errorEl = form.querySelector(`[data-testid="error-${CSS.escape(blockId)}"]`);
        showError(errorEl || topError, message);
      }
      return;
    }
    state.modalKey = "?"; // whatever the stack is now, draw it
    await refreshSlack();
  } finally {
    if (submit) submit.disabled = false;
  }
}

async function closeModal(view) {
  await post(`${API}/slack/${state.user}/close`, { view_id: view.id });
  state.modalKey = "?";
  await refreshSlack();
}

// --- the Slack panel ----------------------------------------------------------------------------
function person(id) { return state.config.people.find((p) => p.id === id); }

const ROLE_NOTES = {
  rep: (p) => `${p.name} owns CRM records (HubSpot owner ${p.owner_id}). Reviews of their records arrive in their DM.`,
  ops: (p) => `${p.name} is on the ops team: may decide any review and may run /crm-rollback.`,
  outsider: (p) => `${p.name} is neither an owner nor ops: the gate refuses their clicks on reviews.`,
};

function setUser(id) {
  state.user = id;
  state.slackJson = "";
  state.modalKey = "";
  $("#user-picker").value = id;
  const p = person(id);
  $("#role-note").textContent = ROLE_NOTES[p.role](p);
  if (state.tab === "home") openHome();
  refreshSlack();
}

function setTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  state.slackJson = "";
  if (tab === "home") openHome();
  renderSlack();
}

async function openHome() {
  await post(`${API}/slack/${state.user}/open_home`);
  await refreshSlack();
}

async function act(action, body) {
  const { body: answer } = await post(`${API}/slack/${state.user}/${action}`, body);
  if (!answer?.ok) showError($("#command-error"), answer?.error || "Slack did not accept that.");
  else showError($("#command-error"), "");
  await refreshSlack();
  await refreshCrm();
  return answer;
}

function messageCard(item, channelId) {
  const ephemeral = item.ephemeral;
  const ctx = {
    onButton: (block, element) => act("click", {
      channel: channelId, ts: item.ts, action_id: element.action_id, block_id: block.block_id,
    }),
  };
  const body = item.blocks && item.blocks.length
    ? renderBlocks(item.blocks, ctx)
    : [h("div", { class: "bk-text", html: mrkdwn(item.text) })];
  return h("div", {
    class: "message" + (ephemeral ? " ephemeral" : ""),
    "data-testid": ephemeral ? "ephemeral" : "message",
    "data-ts": item.ts,
  },
  h("div", { class: "avatar" }, "G"),
  h("div", { class: "message-main" },
    h("div", { class: "message-head" },
      h("b", {}, "CRM Gate"), h("span", { class: "app" }, "APP"),
      h("span", { class: "time" }, clock(Number(item.ts))),
      item.edited ? h("span", { class: "edited" }, "(edited)") : null),
    ephemeral ? h("div", { class: "only-you", "data-testid": "only-you" }, "👁 Only visible to you") : null,
    h("div", { class: "message-body" }, body)));
}

function renderSlack() {
  const data = state.slack;
  const feed = $("#slack-feed");
  if (!data || data.user !== state.user) return;
  const channels = data.channels;
  for (const tab of ["dm", "alerts", "reviews"]) {
    const badge = document.querySelector(`#tab-${tab} .badge`);
    const n = channels[tab].messages.length;
    badge.textContent = n ? String(n) : "";
  }
  renderModal(data.views);
  const json = JSON.stringify([state.tab, data.channels, data.ephemerals, data.home]);
  if (json === state.slackJson) return;
  state.slackJson = json;
  const atBottom = feed.scrollHeight - feed.scrollTop - feed.clientHeight < 40;

  if (state.tab === "home") {
    const home = data.home;
    feed.replaceChildren(h("div", { class: "home", "data-testid": "home" },
      home ? renderBlocks(home.blocks, {
        onButton: (block, element) => act("click_home", { action_id: element.action_id, block_id: block.block_id }),
      }) : h("p", { class: "note" }, "Opening the App Home…")));
    return;
  }
  const channel = channels[state.tab];
  const shownElsewhere = new Set([channels.alerts.id, channels.reviews.id]);
  const ephemerals = data.ephemerals.filter((e) =>
    state.tab === "dm" ? !shownElsewhere.has(e.channel) : e.channel === channel.id);
  const items = [
    ...channel.messages.map((m) => ({ ...m, channel: channel.id })),
    ...ephemerals.map((e) => ({ ...e, ephemeral: true })),
  ].sort((a, b) => Number(a.ts) - Number(b.ts));
  const intro = {
    dm: `Your direct messages with the CRM Gate app. Reviews of records you own arrive here.`,
    alerts: `#${state.config.channels.alerts.name}: blocked writes, failures and conflicts.`,
    reviews: `#${state.config.channels.reviews.name}: reviews of records whose owner has no Slack account.`,
  }[state.tab];
  feed.replaceChildren(
    h("p", { class: "channel-intro" }, intro),
    ...(items.length ? items.map((m) => messageCard(m, m.channel)) : [h("p", { class: "note empty" }, "No messages yet.")]));
  if (atBottom || state.scrollToEnd) feed.scrollTop = feed.scrollHeight;
  state.scrollToEnd = false;
}

async function refreshSlack() {
  if (!state.user) return;
  const user = state.user;
  const { ok, body } = await api(`${API}/slack/${user}`);
  if (ok && user === state.user) { state.slack = body; renderSlack(); }
}

async function runCommand(ev) {
  ev.preventDefault();
  const input = $("#command-input");
  const line = input.value.trim();
  if (!line) return;
  if (!line.startsWith("/")) {
    showError($("#command-error"), "Only slash commands can be sent here (they start with /).");
    return;
  }
  const button = $("#command-send");
  button.disabled = true;
  try {
    if (state.tab !== "dm") setTab("dm"); // the answer shows where the command ran: the DM
    state.scrollToEnd = true;
    const answer = await act("command", { command: line });
    if (answer?.ok) input.value = "";
  } finally {
    button.disabled = false;
  }
}

// --- the agent panel ----------------------------------------------------------------------------
const EXAMPLES = [
  {
    id: "enrichment", label: "Enrichment: contact job title (autonomous)",
    note: "jobtitle is autonomous: written to the CRM at once, with its before-image kept for rollback.",
    body: { object: "contacts", record_id: "5001", changes: { jobtitle: "VP Procurement" },
      reason: "LinkedIn profile updated on 28 Nov", evidence: ["https://www.linkedin.com/in/example"], run_id: "enrich-1" },
  },
  {
    id: "stage", label: "Stage move: deal 9001 → Contract Sent (reviewed)",
    note: "dealstage is reviewed: Ava Reed, the deal's owner, gets a DM with Approve / Edit / Reject.",
    body: { object: "deals", record_id: "9001", changes: { dealstage: "contractsent" },
      reason: "Call on 30 Nov: buyer asked for the contract", evidence: ["https://calls.example.com/rec/42"], run_id: "run-42" },
  },
  {
    id: "amount", label: "Amount change: deal 9001 (never autonomous)",
    note: "amount is never_autonomous: blocked, nothing written, and an alert goes to #alerts.",
    body: { object: "deals", record_id: "9001", changes: { amount: 52000 },
      reason: "Buyer mentioned 52k on the call", run_id: "run-42" },
  },
  {
    id: "activities", label: "A note and a task on deal 9001 (activities)",
    note: "Notes are autonomous (created at once); tasks are reviewed (Ava decides).",
    body: { object: "deals", record_id: "9001", activities: [
      { kind: "note", body: "Call summary: renewal confirmed, security questionnaire pending." },
      { kind: "task", subject: "Send the security questionnaire", body: "Buyer asked on the call", due: "2026-12-05" },
    ], reason: "Follow-up from the call on 30 Nov", run_id: "run-42" },
  },
  {
    id: "mixed", label: "All tiers at once: deal 9001 (README example)",
    note: "One proposal, three tiers: description is written, dealstage goes to Ava, amount is blocked.",
    body: { object: "deals", record_id: "9001",
      changes: { description: "Renewal confirmed on the call", dealstage: "contractsent", amount: 52000 },
      reason: "Call on 30 Nov: buyer confirmed the renewal", run_id: "run-42" },
  },
];

function pickExample(id) {
  const example = EXAMPLES.find((e) => e.id === id) || EXAMPLES[0];
  $("#example-picker").value = example.id;
  $("#example-note").textContent = example.note;
  $("#proposal-body").value = JSON.stringify(example.body, null, 2);
  $("#idempotency-key").value = newKey();
}

const STATUS_CLASS = {
  committed: "ok", queued: "wait", committing: "wait", pending_review: "wait", shadowed: "info",
  blocked: "bad", refused: "bad", rejected: "bad", conflict: "bad", failed: "bad", expired: "muted",
  accepted: "ok", reverted: "info",
};
const chip = (text, cls) => h("span", { class: `chip ${cls || STATUS_CLASS[text] || ""}` }, text);

function renderProposalResult(status, body, replayed) {
  const out = $("#proposal-result");
  const parts = [h("div", { class: "result-head" },
    h("span", { class: `http ${status < 300 ? "ok" : "bad"}`, "data-testid": "proposal-http" }, `HTTP ${status}`),
    replayed ? chip("replayed", "info") : null,
    body?.id ? h("code", { "data-testid": "proposal-id", class: "pid" }, body.id) : null)];
  if (body?.changes) {
    parts.push(h("table", { class: "changes", "data-testid": "proposal-changes" },
      h("tr", {}, h("th", {}, "change"), h("th", {}, "tier"), h("th", {}, "status")),
      body.changes.map((c) => h("tr", { "data-field": c.field },
        h("td", {}, c.field, c.reason ? h("div", { class: "why" }, c.reason) : null),
        h("td", {}, chip(c.tier, "tier-" + c.tier)),
        h("td", { "data-testid": `proposal-status-${c.field}` }, chip(c.status))))));
  } else if (body?.error) {
    parts.push(h("div", { class: "error" }, `${body.error.code}: ${body.error.message}`));
  }
  parts.push(h("details", {}, h("summary", {}, "Raw answer"), h("pre", { "data-testid": "proposal-raw" }, JSON.stringify(body, null, 2))));
  out.replaceChildren(...parts);
}

async function sendProposal() {
  let parsed;
  try { parsed = JSON.parse($("#proposal-body").value); } catch (e) {
    renderProposalResult(0, { error: { code: "not_json", message: `the textarea is not valid JSON: ${e.message}` } });
    return;
  }
  const button = $("#send-proposal");
  button.disabled = true;
  try {
    const resp = await fetch("/v1/proposals", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Authorization: `Bearer ${state.key}`,
        "Idempotency-Key": $("#idempotency-key").value.trim(),
      },
      body: JSON.stringify(parsed),
    });
    const body = await resp.json().catch(() => ({}));
    renderProposalResult(resp.status, body, resp.headers.get("Idempotent-Replayed") === "true");
    state.lastProposal = body?.id ? { id: body.id, status: resp.status } : null;
    if (resp.status < 300) $("#idempotency-key").value = newKey();
    state.scrollToEnd = true;
    await Promise.all([refreshSlack(), refreshCrm()]);
  } finally {
    button.disabled = false;
  }
}

// What the agent sees afterwards: GET /v1/proposals/{id}, polled.
async function refreshLastProposal() {
  const last = state.lastProposal;
  if (!last) return;
  const resp = await fetch(`/v1/proposals/${last.id}`, { headers: { Authorization: `Bearer ${state.key}` } });
  if (!resp.ok || state.lastProposal !== last) return;
  const detail = await resp.json();
  for (const c of detail.changes || []) {
    const cell = document.querySelector(`#proposal-result [data-testid="proposal-status-${CSS.escape(c.field)}"]`);
    if (cell && cell.textContent !== c.status) cell.replaceChildren(chip(c.status));
  }
}

// --- the CRM panel ------------------------------------------------------------------------------
const OBJECT_TITLES = { deals: "Deals", contacts: "Contacts", companies: "Companies" };

function display(objectType, field, value) {
  if (value === null || value === undefined || value === "") return "—";
  const meta = state.config.objects[objectType];
  if (field === meta.owner_field) return state.crm?.owners?.[value] || value;
  const label = meta.options[field]?.[value];
  if (label) return label;
  if (/^\d{4}-\d{2}-\d{2}T00:00:00(\.000)?Z$/.test(value)) return value.slice(0, 10);
  return String(value);
}

function recordName(objectType, record) {
  const meta = state.config.objects[objectType];
  const p = record.properties;
  if (objectType === "contacts" && (p.firstname || p.lastname)) return `${p.firstname || ""} ${p.lastname || ""}`.trim();
  return p[meta.name_field] || `${objectType} ${record.id}`;
}

function recordCard(objectType, record) {
  const meta = state.config.objects[objectType];
  const key = `${objectType}/${record.id}`;
  const selected = state.selected === key;
  const rows = Object.entries(meta.fields).map(([field, rule]) => {
    const value = record.properties[field] ?? null;
    const seenKey = `${key}/${field}`;
    const before = state.seenValues.get(seenKey);
    const changed = state.seenValues.has(seenKey) && before !== value;
    state.seenValues.set(seenKey, value);
    const valueEl = h("span", {
      class: "value" + (changed ? " changed" : ""),
      "data-testid": `crm-${objectType}-${record.id}-${field}`,
      "data-value": value ?? "",
      title: value ?? "",
    }, display(objectType, field, value));
    return h("tr", {},
      h("th", {}, meta.labels[field] || field),
      h("td", {}, valueEl),
      h("td", {}, chip(rule.mode === "shadow" ? `${rule.tier} · shadow` : rule.tier, "tier-" + rule.tier)));
  });
  const card = h("div", { class: "record" + (selected ? " selected" : ""), "data-testid": `record-${objectType}-${record.id}` },
    h("button", { type: "button", class: "record-head", "data-testid": `record-open-${objectType}-${record.id}`,
      onclick: () => selectRecord(selected ? null : key) },
      h("b", {}, recordName(objectType, record)),
      h("span", { class: "muted" }, ` #${record.id}`),
      meta.owner_field ? h("span", { class: "owner" }, display(objectType, meta.owner_field, record.properties[meta.owner_field])) : null),
    h("table", { class: "props" }, rows));
  if (record.activities.length) {
    card.append(h("div", { class: "activities" }, record.activities.map((a) =>
      h("div", { class: "activity" + (a.archived ? " archived" : ""), "data-testid": "crm-activity" },
        a.kind === "task" ? "☐ " : "📝 ",
        h("b", {}, a.kind), ": ", a.subject ? `${a.subject} — ` : "", (a.body || "").slice(0, 120),
        a.archived ? " (deleted)" : ""))));
  }
  if (selected) card.append(historyBlock(objectType, record.id));
  return card;
}

function who(id) {
  if (!id) return "";
  const p = state.config.people.find((x) => x.id === id);
  return p ? `@${p.first}` : id;
}

function showValue(v) {
  if (v === null || v === undefined) return "∅";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function historyBlock(objectType, recordId) {
  const data = state.history;
  const el = h("div", { class: "history", "data-testid": `history-${objectType}-${recordId}` },
    h("div", { class: "history-title" }, "Ledger history"));
  if (!data || data.object !== objectType || data.record_id !== recordId) {
    el.append(h("p", { class: "note" }, "Loading…"));
    return el;
  }
  if (!data.proposals.length) {
    el.append(h("p", { class: "note" }, "No proposals for this record yet."));
    return el;
  }
  for (const p of data.proposals) {
    el.append(h("div", { class: "hist-proposal", "data-testid": "history-proposal", "data-proposal-id": p.id },
      h("div", { class: "hist-head" },
        h("code", {}, p.id),
        h("span", { class: "muted" }, `${p.agent} · ${clock(p.created_at)}`,
          p.decision ? ` · ${p.decision} by ${who(p.decided_by)}` : ""),
        h("button", { type: "button", class: "link", title: "Put /crm-rollback for this proposal in the Slack command box",
          "data-testid": "history-rollback", onclick: () => {
            $("#command-input").value = `/crm-rollback ${p.id}`;
            $("#command-input").focus();
          } }, "↩ rollback…")),
      p.reason ? h("div", { class: "why" }, p.reason) : null,
      h("table", { class: "hist-changes" }, p.changes.map((c) => h("tr", { "data-testid": "history-change", "data-status": c.status },
        h("td", {}, c.reverts_change_id ? "↩ " : "", c.kind === "activity" ? `${c.field} (activity)` : c.field),
        h("td", {}, chip(c.tier, "tier-" + c.tier)),
        h("td", {}, chip(c.status)),
        h("td", { class: "mono" },
          c.status === "committed" && c.kind !== "activity"
            ? `${showValue(c.before)} → ${showValue(c.written)}`
            : c.kind === "activity" ? "" : `proposed ${showValue(c.approved ?? c.proposed)}`,
          c.reason || c.error ? h("div", { class: "why" }, c.reason || c.error) : null),
        h("td", { class: "muted" }, c.decided_by ? `${who(c.decided_by)}` : ""))))));
  }
  return el;
}

function renderCrm() {
  const data = state.crm;
  if (!data) return;
  const json = JSON.stringify([data, state.selected, state.history]);
  if (json === state.crmJson) return;
  state.crmJson = json;
  const root = $("#crm-records");
  root.replaceChildren(...Object.keys(OBJECT_TITLES).map((objectType) =>
    h("div", { class: "object-group" },
      h("h3", {}, OBJECT_TITLES[objectType]),
      (data.records[objectType] || []).map((r) => recordCard(objectType, r)))));
}

async function refreshCrm() {
  const [crm, history] = await Promise.all([
    api(`${API}/crm`),
    state.selected ? api(`${API}/crm/${state.selected}/history`) : Promise.resolve(null),
  ]);
  if (crm.ok) state.crm = crm.body;
  if (history?.ok && `${history.body.object}/${history.body.record_id}` === state.selected) state.history = history.body;
  renderCrm();
}

function selectRecord(key) {
  state.selected = key;
  state.history = null;
  renderCrm();
  refreshCrm();
}

// --- start --------------------------------------------------------------------------------------
async function poll() {
  try {
    await Promise.all([refreshSlack(), refreshCrm(), refreshLastProposal()]);
  } catch (e) {
    console.warn("poll failed", e);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function start() {
  const [config, key] = await Promise.all([api(`${API}/config`), api(`${API}/agent-key`)]);
  state.config = config.body;
  state.key = key.body.key;
  $("#agent-key").textContent = state.key;
  $("#agent-curl").textContent =
    `curl -s ${location.origin}/v1/proposals \\\n  -H "Authorization: Bearer ${state.key}" \\\n` +
    `  -H "Idempotency-Key: try-1" -H "Content-Type: application/json" \\\n` +
    `  -d '{"object":"deals","record_id":"9001","changes":{"description":"Renewal confirmed"}}'`;
  $("#tab-alerts").firstChild.textContent = `#${state.config.channels.alerts.name}`;
  $("#tab-reviews").firstChild.textContent = `#${state.config.channels.reviews.name}`;

  const picker = $("#user-picker");
  const roleLabel = { rep: "rep", ops: "ops", outsider: "not a reviewer" };
  picker.replaceChildren(...state.config.people.map((p) =>
    h("option", { value: p.id }, `${p.name} (${roleLabel[p.role]})`)));
  picker.addEventListener("change", () => setUser(picker.value));
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => setTab(b.dataset.tab));
  $("#composer").addEventListener("submit", runCommand);

  const examples = $("#example-picker");
  examples.replaceChildren(...EXAMPLES.map((e) => h("option", { value: e.id }, e.label)));
  examples.addEventListener("change", () => pickExample(examples.value));
  $("#new-key").addEventListener("click", () => { $("#idempotency-key").value = newKey(); });
  $("#send-proposal").addEventListener("click", sendProposal);

  pickExample(EXAMPLES[1].id);
  setTab("dm");
  setUser(state.config.people[0].id);
  state.selected = "deals/9001";
  document.body.dataset.ready = "1";
  poll();
}

start();
