// sealagg console: vanilla JavaScript served by the appliance (no framework, nothing from the
// network). Every value from the appliance is put on the page as text (textContent), never as
// markup. Actions are POSTs with the identity's CSRF token; the server checks everything again.
"use strict";

(function () {
  const PAGES = ["federation", "runs", "participants", "versions", "approvals", "privacy",
    "attestations", "audit"];
  const REFRESH_MS = 3000;
  let me = { admin: null, roles: [], csrf: null, can_read: true };
  let live = null;
  let liveAt = 0;
  let current = "federation";
  let plotStamp = 0;

  // ---- small DOM helpers -----------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const $ = (id) => document.getElementById(id);

  function fmt(value) {
    if (value === null || value === undefined || value === "") return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
    }
    if (Array.isArray(value)) return value.length ? value.map(fmt).join(", ") : "–";
    if (typeof value === "object") {
      return Object.entries(value).map(([k, v]) => k + ": " + fmt(v)).join(", ") || "–";
    }
    return String(value);
  }
  function time(value) {
    if (!value) return "–";
    return String(value).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
  }
  function bytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let v = Number(value), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }

  function kv(table, rows) {
    table.replaceChildren(...rows.map(([key, value]) =>
      el("tr", {}, el("th", { text: key }), el("td", {}, value instanceof Node ? value : fmt(value)))));
  }

  // columns: [[heading, row => text | Node, optional class fn]]
  function table(container, columns, rows, empty) {
    if (!rows || rows.length === 0) {
      container.replaceChildren(el("p", { class: "muted", text: empty || "nothing yet" }));
      return;
    }
    const head = el("tr", {}, ...columns.map(([h]) => el("th", { text: h })));
    const body = rows.map((row) => el("tr", { "data-key": row.__key },
      ...columns.map(([, get, cls]) => {
        const value = get(row);
        return el("td", { class: cls ? cls(row) : null },
          value instanceof Node ? value : fmt(value));
      })));
    container.replaceChildren(el("table", { class: "data" }, el("thead", {}, head),
      el("tbody", {}, ...body)));
  }

  function flash(text, ok) {
    const box = $("flash");
    box.textContent = text;
    box.className = "flash " + (ok ? "ok" : "bad");
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  // ---- talking to the appliance ----------------------------------------------------------
  async function getJSON(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  async function view(name, args) {
    const query = args ? "?" + new URLSearchParams(args).toString() : "";
    return getJSON("/api/view/" + encodeURIComponent(name) + query);
  }
  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf || "" },
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok && data.ok === undefined) data.ok = false;
    if (!response.ok) data.detail = data.error || data.detail || response.statusText;
    return data;
  }
  function may(role) {
    return me.admin !== null && (me.roles.length === 0 || me.roles.includes(role));
  }
  function actionButton(label, role, handler, extra) {
    const allowed = may(role);
    return el("button", Object.assign({
      type: "button",
      class: "action",
      disabled: !allowed,
      title: allowed ? null : (me.admin ? "needs the " + role + " role" : "read-only: sign in with `sealagg console`"),
      onclick: async (event) => {
        const button = event.currentTarget;
        button.disabled = true;
        try { await handler(button); } finally { button.disabled = false; }
      },
    }, extra || {}), label);
  }
  async function act(path, body, what) {
    const result = await post(path, body);
    flash((result.ok ? "✓ " : "✗ ") + what + (result.detail ? ": " + result.detail : ""), result.ok);
    await refresh(true);
    return result;
  }

  // ---- identity --------------------------------------------------------------------------
  async function whoami() {
    try { me = await getJSON("/api/me"); } catch (e) { me = { admin: null, roles: [], can_read: false }; }
    const who = $("who");
    if (me.admin) {
      who.textContent = me.admin + " (" + me.via + (me.roles.length ? " · " + me.roles.join(", ") : "") + ")";
      $("logout").hidden = me.via !== "session";
    } else {
      who.textContent = "read-only viewer";
      $("logout").hidden = true;
    }
    const banner = $("banner");
    if (!me.can_read) {
      banner.textContent = "Sign in: run `sealagg console` on a machine with your administrator kit and open the link it prints." + (me.note ? " (" + me.note + ")" : "");
      banner.hidden = false;
    } else if (!me.admin) {
      banner.textContent = "Read-only: actions need an administrator (run `sealagg console`)." + (me.note ? " " + me.note + "." : "");
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  // ---- live ------------------------------------------------------------------------------
  function renderLive() {
    const round = live && live.round;
    $("live-round").textContent = round ? "round " + round.number : "no round";
    const phase = $("live-phase");
    phase.textContent = round ? String(round.phase) : "idle";
    phase.setAttribute("data-phase", round ? String(round.phase) : "idle");
    $("live-counts").textContent = round
      ? round.clients_in + " in · " + round.waiting_count + " waiting · " + round.vanished_count + " vanished"
      : (live ? (live.ready_clients || []).length + " ready" : "");
    tickDeadline();
    if (current === "runs") renderLiveTable();
  }
  function secondsLeft() {
    const round = live && live.round;
    if (!round || round.deadline_seconds_left === null || round.deadline_seconds_left === undefined) return null;
    return Math.max(0, round.deadline_seconds_left - (Date.now() - liveAt) / 1000);
  }
  function tickDeadline() {
    const left = secondsLeft();
    $("live-deadline").textContent = left === null ? "" : "deadline in " + left.toFixed(0) + " s";
    const cell = document.getElementById("live-deadline-cell");
    if (cell) cell.textContent = left === null ? "–" : left.toFixed(1) + " s";
  }
  function renderLiveTable() {
    const round = live && live.round;
    const run = live && live.run;
    kv($("live-table"), [
      ["Run", run ? run.name + " (" + run.id + ", " + run.status + ", " + run.rounds_done + "/" + (run.rounds || "∞") + " rounds)" : "–"],
      ["Mode", live ? live.mode : "–"],
      ["Model version", live ? live.model_version : "–"],
      ["Round", round ? round.number : "no round open"],
      ["Phase", el("span", { class: "phase", id: "live-phase-cell", text: round ? String(round.phase) : "idle" })],
      ["Clients in", round ? round.clients_in + " of " + (round.members || []).length : "–"],
      ["Waiting for", round ? fmt(round.waiting) : "–"],
      ["Vanished", round ? fmt(round.vanished) : "–"],
      ["Deadline", el("span", { id: "live-deadline-cell", text: "–" })],
      ["Ready clients", live ? fmt(live.ready_clients) : "–"],
      ["Bytes in / out", live ? bytes(live.bytes_in) + " / " + bytes(live.bytes_out) : "–"],
      ["Last outcome", lastOutcome()],
    ]);
    tickDeadline();
  }
  function lastOutcome() {
    const history = (live && live.history) || [];
    const last = history[history.length - 1];
    if (!last) return "–";
    return "round " + last.number + ": " + last.outcome + (last.reason ? " (" + last.reason + ")" : "") +
      ", " + (last.contributors || []).length + " contributors" +
      ((last.dropped || []).length ? ", dropped " + last.dropped.join(", ") : "") +
      (typeof last.seconds === "number" ? ", " + last.seconds.toFixed(2) + " s" : "");
  }
  function startLive() {
    if (!window.EventSource) { setInterval(pollLive, 1000); return; }
    const source = new EventSource("/events");
    source.addEventListener("live", (event) => {
      try { live = JSON.parse(event.data); liveAt = Date.now(); renderLive(); } catch (e) { /* ignore */ }
    });
    source.addEventListener("expired", () => { source.close(); whoami(); });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setTimeout(startLive, 3000);
    };
  }
  async function pollLive() {
    try { live = await view("live"); liveAt = Date.now(); renderLive(); } catch (e) { /* ignore */ }
  }

  // ---- pages -----------------------------------------------------------------------------
  const render = {};

  render.federation = async function () {
    const f = await view("federation");
    $("fed-name").textContent = f.name || "";
    kv($("fed-policy"), [
      ["Mode", f.mode], ["Colluders (c)", f.colluders], ["Fewest clients per sum (m)", f.minimum_survivors],
      ["Threshold (t)", f.threshold], ["Neighbours (k)", f.neighbours], ["Min clients", f.min_clients],
      ["Approval required", f.require_approval], ["Approvals required", f.approvals_required],
      ["Differential privacy", f.dp_mode], ["Attestation", f.attestation || "none"], ["Policy", f.policy],
    ]);
    const cert = (c) => c ? c.subject + " — until " + time(c.not_after) + " (" + c.days_left + " days)" : "–";
    const roster = f.roster || {};
    kv($("fed-certs"), [
      ["Server certificate", cert(f.server_certificate)], ["CA certificate", cert(f.ca_certificate)],
      ["Roster", roster.installed ? "version " + roster.version + ", " + roster.entries + " entries" : "not installed"],
      ["Authority pinned", roster.authority_pinned], ["Roster signed by", roster.signed_by],
    ]);
    table($("fed-admins"), [["Name", (a) => a.name], ["Roles", (a) => a.roles], ["Legacy", (a) => a.legacy]],
      f.admins, f.admin_directory_error || "no named administrators");
  };

  render.runs = async function () {
    renderLiveTable();
    const [runs, rounds] = await Promise.all([view("runs"), view("rounds", { limit: 50 })]);
    table($("runs-table"), [
      ["Run", (r) => r.id], ["Name", (r) => r.name], ["Mode", (r) => r.mode],
      ["Status", (r) => r.status, (r) => "status-" + r.status],
      ["Rounds", (r) => r.rounds_done + " / " + (r.rounds || "∞")],
      ["Base version", (r) => r.base_model_version], ["Created", (r) => time(r.created_at) + " by " + fmt(r.created_by)],
      ["Ended", (r) => time(r.ended_at)], ["Reason", (r) => r.reason],
      ["", (r) => runButtons(r)],
    ], runs, "no runs (rounds follow the appliance's configuration)");
    table($("rounds-table"), [
      ["Round", (r) => r.number], ["Run", (r) => r.run_id], ["Mode", (r) => r.mode],
      ["Outcome", (r) => r.status, (r) => "status-" + r.status], ["Reason", (r) => r.reason],
      ["Started", (r) => time(r.started_at)], ["Duration", (r) => r.duration_seconds === null ? "–" : r.duration_seconds.toFixed(2) + " s"],
      ["Members", (r) => r.members], ["Survivors", (r) => r.survivors], ["Bytes", (r) => bytes(r.bytes)],
      ["Time per phase", (r) => (r.phases || []).map((p) => p.phase + " " + (p.seconds === null || p.seconds === undefined ? "–" : p.seconds.toFixed(2) + " s")).join(" · ")],
    ], rounds, "no rounds yet");
    setPlot("plot-phases", "phases");
    setPlot("plot-clients", "clients");
  };
  function runButtons(run) {
    const box = el("span", { class: "actions" });
    const actions = run.status === "running" ? ["pause", "stop"]
      : run.status === "paused" ? ["resume", "stop"]
      : run.status === "created" ? ["start", "stop"] : [];
    for (const action of actions) {
      box.append(actionButton(action, "operator",
        () => act("/api/run/" + action, { run_id: run.id, reason: "from the console" }, action + " run " + run.id),
        { "data-action": action }));
    }
    return box;
  }

  render.participants = async function () {
    const clients = await view("clients");
    table($("clients-table"), [
      ["Client", (c) => c.name], ["State", (c) => c.state, (c) => "state-" + c.state],
      ["Ready", (c) => c.ready], ["In round", (c) => c.in_round], ["Last seen", (c) => time(c.last_seen)],
      ["Kit valid", (c) => c.kit_valid], ["Certificate", (c) => "until " + time(c.not_after) + " (" + c.days_left + " d)"],
      ["Revoked", (c) => c.revoked ? "revoked " + time(c.revoked_at) + (c.revoke_reason ? " — " + c.revoke_reason : "") : "no"],
      ["Attestation", (c) => c.attestation ? (c.attestation.accepted ? "accepted" : "refused: " + fmt(c.attestation.reason)) + " (" + fmt(c.attestation.format) + ")" : "–"],
      ["", (c) => c.revoked ? "" : revokeControls(c)],
    ], clients.map((c) => Object.assign({ __key: c.name }, c)), "no clients issued");
  };
  function revokeControls(client) {
    const reason = el("input", { type: "text", placeholder: "reason", class: "reason", "data-for": client.name });
    return el("span", { class: "actions" }, reason, actionButton("Revoke", "operator", () => {
      if (!reason.value.trim()) { flash("✗ give a reason to revoke " + client.name, false); return Promise.resolve(); }
      return act("/api/revoke", { name: client.name, reason: reason.value }, "revoke " + client.name);
    }, { "data-action": "revoke" }));
  }

  render.versions = async function () {
    const versions = await view("versions");
    table($("versions-table"), [
      ["Version", (v) => v.version], ["Parent", (v) => v.parent], ["Round", (v) => v.round],
      ["Status", (v) => v.current ? v.status + " (current)" : v.status, (v) => "status-" + v.status + (v.current ? " current" : "")],
      ["Metrics", (v) => v.metrics], ["Created", (v) => time(v.created_at)],
      ["SHA-256", (v) => v.sha256 ? String(v.sha256).slice(0, 16) + "…" : "–"],
    ], versions.slice().reverse().map((v) => Object.assign({ __key: "v" + v.version }, v)), "no model versions");
    setPlot("plot-metrics", "metrics");
  };

  render.approvals = async function () {
    const pending = await view("approvals");
    updateBadge(pending.length);
    table($("approvals-table"), [
      ["Round", (a) => a.round], ["Candidate version", (a) => a.version], ["Metrics", (a) => a.metrics],
      ["Created", (a) => time(a.created_at)],
      ["Approvals", (a) => a.approvals_count + " of " + a.required + (a.approvals && a.approvals.length ? " (" + a.approvals.map((x) => x.admin).join(", ") + ")" : "")],
      ["Decision", (a) => decisionControls(a)],
    ], pending.map((a) => Object.assign({ __key: "r" + a.round }, a)), "no candidate is waiting for a decision");
  };
  function decisionControls(item) {
    const reason = el("input", { type: "text", placeholder: "reason", class: "reason", "data-for": String(item.round) });
    const decide = (approve) => () => act("/api/decide", { round: item.round, approve: approve, reason: reason.value },
      (approve ? "approve" : "reject") + " round " + item.round);
    return el("span", { class: "actions" }, reason,
      actionButton("Approve", "approver", decide(true), { "data-action": "approve" }),
      actionButton("Reject", "approver", decide(false), { "data-action": "reject", class: "action danger" }));
  }
  function updateBadge(count) {
    const badge = $("approvals-badge");
    badge.textContent = String(count);
    badge.hidden = !count;
  }

  render.privacy = async function () {
    const p = await view("privacy");
    kv($("privacy-summary"), [
      ["Enabled", p.enabled], ["Mode", p.mode], ["Accountant", p.accountant], ["δ", p.delta],
      ["Target ε", p.target_epsilon], ["ε spent (cumulative)", p.epsilon_cumulative], ["Exhausted", p.exhausted],
    ]);
    const rows = [];
    for (const run of p.runs || []) {
      for (const point of run.series || []) rows.push(Object.assign({ run_id: run.run_id }, point));
    }
    table($("privacy-table"), [
      ["Run", (r) => r.run_id], ["Round", (r) => r.round], ["ε this round", (r) => r.epsilon_round],
      ["ε cumulative", (r) => r.epsilon_cumulative], ["At", (r) => time(r.at)],
    ], rows.reverse(), p.enabled ? "no round spent budget yet" : "differential privacy is off");
    // Async runs: each client's ε, composed over the buffers it joined (a fast client spends more).
    const clients = (p.clients && p.clients.epsilon) || {};
    const exhausted = new Set((p.clients && p.clients.exhausted) || []);
    table($("privacy-clients"), [
      ["Client", (c) => c.name], ["ε spent", (c) => c.epsilon],
      ["Buffers joined", (c) => (p.clients.participations || {})[c.name]],
      ["Budget", (c) => exhausted.has(c.name) ? "spent" : "left", (c) => exhausted.has(c.name) ? "bad" : "good"],
    ], Object.keys(clients).sort().map((name) => ({ name: name, epsilon: clients[name], __key: name })),
    "no asynchronous buffer spent budget yet");
    setPlot("plot-epsilon", "epsilon");
  };

  render.attestations = async function () {
    const items = await view("attestations", { limit: 200 });
    table($("attestations-table"), [
      ["#", (a) => a.seq], ["At", (a) => time(a.at)], ["Client", (a) => a.client], ["Round", (a) => a.round],
      ["Result", (a) => a.accepted ? "accepted" : "refused", (a) => a.accepted ? "good" : "bad"],
      ["Format", (a) => a.format], ["Reason", (a) => a.reason], ["Detail", (a) => a.detail],
    ], items, "no attestation results (clients report them when the appliance attests)");
  };

  render.audit = async function () {
    const container = $("audit-table");
    if (!me.admin) {
      container.replaceChildren(el("p", { class: "muted", text: "The audit log's entries are shown to administrators only." }));
      return;
    }
    let page = await view("audit", { offset: 0, limit: 100 });
    if (page.total > 100) page = await view("audit", { offset: page.total - 100, limit: 100 });
    table(container, [
      ["#", (e) => e.seq], ["At", (e) => time(e.at)], ["Event", (e) => e.kind], ["By", (e) => e.actor],
      ["Details", (e) => e.summary],
    ], (page.entries || []).slice().reverse(), "the audit log is empty");
  };

  async function verifyAudit() {
    const out = $("audit-result");
    out.textContent = "verifying…";
    out.className = "result";
    const result = await post("/api/audit/verify", {});
    if (result.ok) {
      out.textContent = "OK — " + fmt(result.entries) + " entries verified";
      out.className = "result good";
    } else if (result.first_broken !== undefined && result.first_broken !== null) {
      const b = result.first_broken;
      const where = typeof b === "object" ? "entry #" + fmt(b.seq) + (b.reason ? ": " + b.reason : (b.detail ? ": " + b.detail : "")) : "entry #" + fmt(b);
      out.textContent = "BROKEN — first broken " + where;
      out.className = "result bad";
    } else {
      out.textContent = "✗ " + (result.detail || result.error || "verification failed");
      out.className = "result bad";
    }
  }

  function setPlot(id, name) {
    $(id).src = "/plots/" + name + ".svg?v=" + plotStamp;
  }

  // ---- navigation and refresh ------------------------------------------------------------
  function busy() {
    const page = $("page-" + current);
    if (!page) return false;
    const active = document.activeElement;
    if (active && page.contains(active) && active.tagName === "INPUT") return true;
    return Array.from(page.querySelectorAll("input.reason")).some((i) => i.value);
  }
  async function refresh(force) {
    if (!me.can_read) return;
    if (!force && busy()) return;
    plotStamp += 1;
    try {
      await render[current]();
      document.body.setAttribute("data-loaded", current);
    } catch (error) {
      flash("✗ " + current + ": " + error.message, false);
    }
    if (current !== "approvals") {
      view("approvals").then((p) => updateBadge(p.length)).catch(() => {});
    }
  }
  function show() {
    const wanted = (location.hash || "#federation").slice(1);
    current = PAGES.includes(wanted) ? wanted : "federation";
    for (const page of PAGES) {
      $("page-" + page).hidden = page !== current;
    }
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.getAttribute("data-page") === current);
    }
    document.body.removeAttribute("data-loaded");
    refresh(true);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("verify-audit").addEventListener("click", verifyAudit);
    $("logout").addEventListener("click", async () => {
      await post("/logout", {});
      await whoami();
      refresh(true);
    });
    await whoami();
    window.addEventListener("hashchange", show);
    show();
    if (me.can_read) startLive();
    setInterval(() => refresh(false), REFRESH_MS);
    setInterval(tickDeadline, 250);
  });
})();
