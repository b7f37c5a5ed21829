// Support desk (support role): fleet health, device search, the fault checklist followed step by
// step in the procedure's words with its evidence, tickets and their activities.
import { api, guard, h, $, t, has, fmt, toast, errorText, fieldText, facts, options, every } from "./common.js";
import { evidence } from "./evidence.js";

const me = await guard("support");

const CHANNELS = ["phone", "email", "whatsapp", "sms", "web"];
const TYPES = ["technical", "information", "field_service"];
const STEPS = ["account", "platform", "reporting", "sms_ping", "action"];
// Which state a ticket may move to from each state (api/routes/support.py: TRANSITIONS).
const TRANSITIONS = {
  open: ["in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"],
  in_progress: ["waiting_customer", "at_installation_center", "resolved", "closed"],
  waiting_customer: ["in_progress", "at_installation_center", "resolved", "closed"],
  at_installation_center: ["in_progress", "waiting_customer", "resolved", "closed"],
  resolved: ["in_progress", "closed"],
  closed: [],
};
const stateLabel = (s) => t(`tickets:state.${s}`);
const typeLabel = (s) => t(`tickets:type.${s}`);
// A category of the checklist's verdicts, else a manual ticket's own (by default its type).
const categoryLabel = (c) => (has(`tickets:category.${c}`) ? t(`tickets:category.${c}`) : has(`tickets:type.${c}`) ? typeLabel(c) : c);
const channelSelect = (testid = "activity-channel") => h("select", { name: "channel", "data-testid": testid }, options(CHANNELS, "channels", "phone"));

$("#new-ticket").type.replaceChildren(...TYPES.map((v) => h("option", { value: v, selected: v === "technical" }, typeLabel(v))));
$("#new-ticket").channel.replaceChildren(...options(CHANNELS, "channels", "phone"));
$("#procedure-steps").replaceChildren(...STEPS.map((s) => h("li", {}, h("b", {}, t(`steps.${s}.title`)), ": ", t(`steps.${s}.explain`))));

// Fleet health --------------------------------------------------------------------------------
let silent = [];

async function loadHealth() {
  const health = await api("/api/v1/support/fleet/health");
  const d = health.devices;
  const card = (key) => h("div", { class: `stat ${key}`, "data-testid": `health-${key}` }, h("b", {}, fmt.number(d[key] ?? 0)), h("span", {}, t(`health.${key}`)));
  const p = health.platform;
  const tickets = Object.entries(health.open_tickets);
  $("#health").replaceChildren(
    h("div", { class: "stats" }, ["total", "online", "gps_not_updated", "offline", "never_reported", "account_blocked"].map(card)),
    h("p", { class: `platform ${p.status}`, "data-testid": "platform" }, t(`health.platform_${p.status}`),
      p.newest_report_age_s !== null ? ` · ${t("health.newest_report", { age: fmt.duration(p.newest_report_age_s) })}` : "",
      p.problems.length ? `: ${p.problems.join("; ")}` : ""),
    h("p", { class: "muted" }, t("health.open_tickets"), " ",
      tickets.length ? tickets.map(([k, n]) => `${categoryLabel(k)}: ${fmt.number(n)}`).join(" · ") : t("common.none")));
  silent = health.silent.map((s) => ({ ...s, seen: Date.now() }));
  renderSilent();
}

// "Silent for 40 s" was read both ways: the silence and the time of the last report, both said.
function renderSilent() {
  $("#silent").replaceChildren(...silent.map((s) => h("li", { "data-testid": "silent-item", "data-device-id": s.device_id },
    h("b", {}, s.plate || s.identifier), ` ${s.account_name || ""}`,
    h("div", { class: "small" }, t("support.silent_for", { duration: fmt.duration(s.silent_for_s + (Date.now() - s.seen) / 1000),
                                                           last: fmt.when(s.last_received_at) })),
    s.open_ticket ? h("span", { class: "pill warn" }, s.open_ticket) : null)));
  if (!silent.length) $("#silent").append(h("li", { class: "muted" }, t("common.none")));
}
$("#health-refresh").addEventListener("click", () => loadHealth().catch((e) => toast(errorText(e), "error")));

// Devices and the checklist -------------------------------------------------------------------
let device = null, polling = null;

$("#search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const hits = await api(`/api/v1/support/devices?q=${encodeURIComponent(ev.target.q.value.trim())}`);
    $("#hits").replaceChildren(...hits.map((d) => h("li", {}, h("button", { type: "button", class: "item", "data-testid": "device-hit", "data-device-id": d.id, onclick: () => openDevice(d) },
      h("b", {}, d.plate || t("support.no_plate")), ` ${d.identifier} · ${d.protocol} · ${d.account_name || t("support.no_account")}`,
      h("span", { class: "muted small line" }, [t("support.last_report", { ago: fmt.ago(d.last_received_at) }), t("support.line", { status: t(`evidence_values.line_status.${d.line_status}`) }),
        d.open_tickets ? t("support.open_tickets", { count: d.open_tickets }) : null].filter(Boolean).join(" · "))))));
    if (!hits.length) $("#hits").append(h("li", { class: "muted" }, t("support.no_match")));
  } catch (e) { toast(errorText(e), "error"); }
});

async function openDevice(d) {
  device = d;
  $("#device").hidden = false;
  $("#device-title").textContent = `${d.plate || d.identifier}`;
  $("#device-facts").replaceChildren(facts([
    [t("support.terminal"), `${d.identifier} (${d.protocol})`],
    [t("support.line_label"), `${d.msisdn || "—"} (${t(`evidence_values.line_status.${d.line_status}`)})`],
    [t("support.account"), `${d.account_name || "—"} (${d.account_status ? t(`evidence_values.status.${d.account_status}`) : "—"})`],
    [t("support.interval"), fmt.duration(d.report_interval_s)],
    [t("support.last_report_label"), d.last_received_at ? `${fmt.ago(d.last_received_at)} (${fmt.dateTime(d.last_received_at)})` : t("common.never")],
    [t("support.open_tickets_label"), fmt.number(d.open_tickets)]]));
  $("#run-view").replaceChildren();
  await loadRuns();
  $("#device").scrollIntoView({ block: "nearest" });
}

const runStatus = (s) => t(`run_status.${s}`);

async function loadRuns() {
  const runs = await api(`/api/v1/support/devices/${device.id}/diagnostics?limit=10`);
  $("#runs").replaceChildren(...runs.map((r) => h("li", {}, h("button", { type: "button", class: "item", onclick: () => renderRun(r) },
    [fmt.dateTime(r.started_at), runStatus(r.status), r.verdict ? t(`verdicts.${r.verdict}`) : null, r.requested_by].filter(Boolean).join(" · ")))));
  if (!runs.length) $("#runs").append(h("li", { class: "muted" }, t("checklist.no_runs")));
}

// A step's summary in the user's language: the catalogue keys the checklist wrote it with
// (checklist namespace), else the English text of runs recorded before there were any.
const stepSummary = (s) => (s.messages && s.messages.length
  ? s.messages.map((m) => t(m.key, m.params)).join("; ") : s.summary);

function renderRun(run) {
  const steps = run.steps.map((s) => h("li", { class: `step ${s.status}`, "data-testid": "step", "data-step": s.name, "data-status": s.status },
    h("span", { class: "badge" }, t(`step_status.${s.status}`)), h("b", {}, t(`steps.${s.name}.title`)),
    h("div", { class: "muted small" }, t(`steps.${s.name}.explain`)),
    h("div", { class: "summary" }, stepSummary(s)), evidence(s.evidence)));
  const pending = run.status === "queued" || run.status === "running";
  $("#run-view").replaceChildren(
    h("div", { class: `run ${run.status}`, "data-testid": "run", "data-status": run.status, "data-run-id": run.id },
      h("p", {}, t("checklist.run_number", { id: run.id }), " · ", h("span", { "data-testid": "run-status" }, runStatus(run.status)),
        pending ? h("span", { class: "spinner", role: "img", "aria-label": t("common.loading") }) : null),
      h("ol", { class: "steps" }, steps),
      run.verdict ? h("div", { class: `verdict ${run.verdict}`, "data-testid": "verdict", "data-verdict": run.verdict },
        h("b", {}, t("checklist.verdict", { verdict: t(`verdicts.${run.verdict}`) })), h("p", {}, has(`verdict_explain.${run.verdict}`) ? t(`verdict_explain.${run.verdict}`) : run.explanation || "")) : null,
      run.ticket ? h("p", { "data-testid": "run-ticket" }, t("checklist.ticket"), " ",
        h("a", { href: "#", onclick: (e) => { e.preventDefault(); openTicket(run.ticket.number); } }, run.ticket.number),
        ` (${typeLabel(run.ticket.type)}, ${stateLabel(run.ticket.state)}): ${t("checklist.give_number")}`) : null));
}

$("#run").addEventListener("click", async () => {
  if (!device) return;
  clearTimeout(polling);
  try {
    let run = await api(`/api/v1/support/devices/${device.id}/diagnostics`, { method: "POST" });
    renderRun(run);
    const poll = async () => {
      try { run = await api(`/api/v1/support/diagnostics/${run.id}`); } catch (e) { toast(errorText(e), "error"); return; }
      renderRun(run);
      if (run.status === "queued" || run.status === "running") polling = setTimeout(poll, 700);
      else { loadRuns(); loadHealth(); if (run.ticket) searchTickets(); }
    };
    polling = setTimeout(poll, 500);
  } catch (e) { toast(errorText(e), "error"); }
});

// Tickets --------------------------------------------------------------------------------------
const QUEUES = ["desk", "technical", "field_service", "carrier", "platform"];
const INTAKE_CHANNELS = ["customer_line", "consultant_line", "phone", "email", "whatsapp", "sms", "web"];
const RESOLUTIONS = ["repair", "replacement", "remote_fix", "information", "other"];
const INTAKE = ["reported_by", "product_model", "quantity", "purchase_date", "fault_reason", "requested_resolution"];
const FILTERS = { open: { open_only: "true" }, mine: { open_only: "true", assignee_id: String(me.id) }, unassigned: { open_only: "true", unassigned: "true" },
                  inform_overdue: { inform: "overdue" }, bring_in_overdue: { bring_in: "overdue" }, all: {} };
$("#ticket-search").filter.replaceChildren(...options(Object.keys(FILTERS), "ticket_filters", "open"));

async function searchTickets() {
  const f = $("#ticket-search");
  const q = f.q.value.trim();
  const params = new URLSearchParams({ limit: "50", ...FILTERS[f.filter.value] });
  if (/^AVL-/i.test(q)) params.set("number", q); else if (q.length >= 2) params.set("q", q);
  const tickets = await api(`/api/v1/support/tickets?${params}`);
  $("#tickets").replaceChildren(...tickets.map((tk) => h("li", {}, h("button", { type: "button", class: `item ticket-item ${tk.state}`, "data-testid": "ticket-item", "data-number": tk.number, onclick: () => openTicket(tk.number) },
    h("b", {}, tk.number), " ", h("span", { class: `pill state-${tk.state}` }, stateLabel(tk.state)), ` ${typeLabel(tk.type)}`,
    tk.inform_status === "overdue" ? h("span", { class: "pill bad" }, t("tickets.inform_overdue_short")) : null,
    tk.bring_in_status === "overdue" ? h("span", { class: "pill bad" }, t("tickets.bring_in_overdue_short")) : null,
    h("span", { class: "small line" }, tk.title),
    h("span", { class: "muted small line" }, [tk.account_name, tk.plate, t(`queues.${tk.queue}`),
      tk.assignee_name || t("tickets.unassigned"), t("tickets.opened_ago", { ago: fmt.ago(tk.opened_at) }),
      tk.sla_due_at ? t("tickets.due", { when: fmt.dateTime(tk.sla_due_at) }) : null].filter(Boolean).join(" · "))))));
  if (!tickets.length) $("#tickets").append(h("li", { class: "muted" }, t("tickets.none")));
}
$("#ticket-search").addEventListener("submit", (ev) => { ev.preventDefault(); searchTickets().catch((e) => toast(errorText(e), "error")); });
$("#ticket-search").filter.addEventListener("change", () => searchTickets().catch((e) => toast(errorText(e), "error")));

const input = (prefix, name, attrs = {}) => h("label", {}, t(`${prefix}.${name}`), " ",
  h(attrs.rows ? "textarea" : "input", { name, ...attrs, "data-testid": `${prefix === "activity" ? "activity" : "ticket"}-${name}` }));
const choice = (name, values, prefix, selected, { blank = false, testid } = {}) => h("select", { name, "data-testid": testid || `ticket-${name}` },
  blank ? h("option", { value: "", selected: !selected }, t("common.not_said")) : null, options(values, prefix, selected));

// The 24 h rule and the bring-in deadline, as the agent reads them.
function deadline(kind, status, due, done) {
  if (!status) return "—";
  if (status === "informed" || status === "brought_in") return t(`tickets.${kind}_done`, { when: fmt.dateTime(done) });
  return t(`tickets.${kind}_${status}`, { when: fmt.dateTime(due) });
}

function intakeValue(tk, k) {
  const v = tk[k];
  if (v === null || v === undefined) return h("span", { class: "missing" }, t("tickets.ask_customer"));
  if (k === "requested_resolution") return t(`resolutions.${v}`);
  if (k === "purchase_date") return fmt.date(v);
  if (k === "quantity") return fmt.number(v);
  return String(v);
}

function resolutionText(r) {
  if (!r) return "—";
  return t(`tickets.resolution_${r.outcome}`, { run: r.run_id, verdict: r.verdict ? t(`verdicts.${r.verdict}`) : "—" });
}

async function openTicket(ref) {
  const tk = await api(`/api/v1/support/tickets/${encodeURIComponent(ref)}`);
  const panel = $("#ticket");
  panel.hidden = false;
  // The ticket's own state first (selected): the form never proposes a state it is not in.
  const next = TRANSITIONS[tk.state] || [];
  const stateForm = h("form", { class: "row", "data-testid": "ticket-state" },
    h("label", { class: "inline" }, t("tickets.state"), " ", h("select", { name: "state", "data-testid": "ticket-state-select" },
      h("option", { value: tk.state, selected: true }, t("tickets.state_current", { state: stateLabel(tk.state) })),
      next.map((s) => h("option", { value: s }, stateLabel(s))))),
    h("label", { class: "inline grow" }, h("span", { class: "sr-only" }, t("tickets.note")),
      h("input", { name: "note", placeholder: t("tickets.note"), "data-testid": "ticket-state-note" })),
    h("button", { type: "submit", disabled: true, "data-testid": "ticket-state-save" }, t("tickets.change_state")));
  stateForm.state.addEventListener("change", () => { stateForm.querySelector("button").disabled = stateForm.state.value === tk.state; });
  stateForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const out = await api(`/api/v1/support/tickets/${tk.number}/state`, { method: "POST", body: { state: stateForm.state.value, note: stateForm.note.value || null } });
      if (out.run_id) toast(t("tickets.resolution_asked", { run: out.run_id }));
      await openTicket(tk.number); searchTickets();
    } catch (e) { toast(errorText(e), "error"); }
  });

  // Who works it, and the intake the customer is still to be asked about.
  const assignee = h("select", { name: "assignee", "data-testid": "ticket-assignee" },
    h("option", { value: "keep", selected: true }, tk.assignee_name ? t("tickets.assignee_current", { name: tk.assignee_name }) : t("tickets.unassigned")),
    tk.assignee_id !== me.id ? h("option", { value: String(me.id) }, t("tickets.assign_me", { name: me.name })) : null,
    tk.assignee_id !== null ? h("option", { value: "none" }, t("tickets.unassign")) : null);
  const workForm = h("form", { class: "stack card", "data-testid": "ticket-work" }, h("h4", {}, t("tickets.work_title")),
    h("div", { class: "row" },
      h("label", { class: "grow" }, t("ticket_fields.queue"), " ", choice("queue", QUEUES, "queues", tk.queue)),
      h("label", { class: "grow" }, t("ticket_fields.assignee"), " ", assignee)),
    input("ticket_fields", "reported_by", { value: tk.reported_by || "", maxlength: 200 }),
    h("div", { class: "row" },
      h("label", { class: "grow" }, t("ticket_fields.product_model"), " ", h("input", { name: "product_model", value: tk.product_model || "", maxlength: 100, "data-testid": "ticket-product_model" })),
      h("label", { class: "grow" }, t("ticket_fields.quantity"), " ", h("input", { name: "quantity", type: "number", min: 1, value: tk.quantity, "data-testid": "ticket-quantity" }))),
    h("div", { class: "row" },
      h("label", { class: "grow" }, t("ticket_fields.purchase_date"), " ", h("input", { name: "purchase_date", type: "date", value: tk.purchase_date || "", "data-testid": "ticket-purchase_date" })),
      h("label", { class: "grow" }, t("ticket_fields.requested_resolution"), " ", choice("requested_resolution", RESOLUTIONS, "resolutions", tk.requested_resolution, { blank: true }))),
    input("ticket_fields", "fault_reason", { value: tk.fault_reason || "", maxlength: 2000 }),
    tk.type === "technical" ? h("label", { class: "inline" }, h("input", { type: "checkbox", name: "escalate", "data-testid": "ticket-escalate" }), " ", t("tickets.escalate")) : null,
    h("button", { type: "submit", "data-testid": "ticket-work-save" }, t("tickets.work_save")));
  workForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = workForm, body = {};
    if (f.queue.value !== tk.queue) body.queue = f.queue.value;
    if (f.assignee.value === "none") body.assignee_id = null; else if (f.assignee.value !== "keep") body.assignee_id = Number(f.assignee.value);
    for (const k of INTAKE) {
      const v = f[k].value.trim();
      const was = tk[k] === null || tk[k] === undefined ? "" : String(tk[k]);
      if (v && v !== was) body[k] = k === "quantity" ? Number(v) : v;
    }
    if (f.escalate && f.escalate.checked) body.type = "field_service";
    if (!Object.keys(body).length) { toast(t("tickets.nothing_changed")); return; }
    try { await api(`/api/v1/support/tickets/${tk.number}`, { method: "PATCH", body }); toast(t("tickets.saved")); await openTicket(tk.number); searchTickets(); }
    catch (e) { toast(errorText(e), "error"); }
  });

  const activityForm = h("form", { class: "stack card", "data-testid": "activity-form" }, h("h4", {}, t("activity.add_title")),
    h("label", {}, t("activity.channel"), " ", channelSelect()), input("activity", "contact", { value: tk.reported_by || "" }),
    input("activity", "reason", { required: true }), input("activity", "customer_message", { rows: 2 }),
    input("activity", "supplied"), input("activity", "pending"), input("activity", "solution"), input("activity", "protocol_applied"),
    input("activity", "appointment_at", { type: "datetime-local" }), input("activity", "notes", { rows: 3 }),
    h("button", { type: "submit", "data-testid": "activity-save" }, t("activity.add")));
  activityForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [k, v] of new FormData(activityForm)) if (v) body[k] = k === "appointment_at" ? new Date(v).toISOString() : v;
    try { await api(`/api/v1/support/tickets/${tk.number}/activities`, { method: "POST", body }); toast(t("activity.added")); await openTicket(tk.number); }
    catch (e) { toast(errorText(e), "error"); }
  });
  const ACTIVITY_FIELDS = ["contact", "customer_message", "supplied", "pending", "solution", "protocol_applied", "appointment_at", "notes"];
  panel.replaceChildren(
    h("h3", { "data-testid": "ticket-number", "data-state": tk.state }, `${tk.number} · ${stateLabel(tk.state)}`), h("p", {}, tk.title),
    facts([[t("tickets.type"), `${typeLabel(tk.type)} · ${categoryLabel(tk.category)}`],
      [t("tickets.account"), tk.account_name || "—"], [t("tickets.vehicle"), tk.plate || tk.identifier || "—"],
      [t("tickets.opened"), fmt.dateTime(tk.opened_at)], [t("tickets.sla_due"), fmt.dateTime(tk.sla_due_at)],
      [t("ticket_fields.queue"), t(`queues.${tk.queue}`)], [t("ticket_fields.assignee"), tk.assignee_name || t("tickets.unassigned")],
      [t("tickets.inform"), h("span", { class: `deadline ${tk.inform_status || ""}`, "data-testid": "ticket-inform" }, deadline("inform", tk.inform_status, tk.inform_due_at, tk.customer_informed_at))],
      tk.bring_in_due_at ? [t("tickets.bring_in"), h("span", { class: `deadline ${tk.bring_in_status || ""}` }, deadline("bring_in", tk.bring_in_status, tk.bring_in_due_at, tk.brought_in_at))] : null,
      tk.center_name ? [t("tickets.center"), tk.center_name] : null,
      tk.resolution ? [t("tickets.resolution"), resolutionText(tk.resolution)] : null,
      [t("tickets.recurrence_of"), tk.recurrence_of ? `#${tk.recurrence_of}` : "—"],
      [t("tickets.dead_on_arrival"), tk.dead_on_arrival ? t("tickets.doa_yes") : t("common.no")]], { "data-testid": "ticket-facts" }),
    h("h4", {}, t("tickets.intake"), " ", h("span", { class: "muted small" }, t(`intake_channels.${tk.intake_channel}`))),
    tk.intake_missing.length ? h("p", { class: "small missing", "data-testid": "intake-missing" },
      t("tickets.intake_missing", { items: tk.intake_missing.map((k) => t(`ticket_fields.${k}`)).join(", ") })) : null,
    facts(INTAKE.map((k) => [t(`ticket_fields.${k}`), intakeValue(tk, k)]), { "data-testid": "ticket-intake" }),
    stateForm,
    workForm,
    h("h4", {}, t("activity.title")),
    h("ol", { class: "activities", "data-testid": "activities" }, tk.activities.map((a) => h("li", { "data-testid": "activity" },
      h("div", { class: "muted small" }, `${fmt.dateTime(a.at)} · ${t(`channels.${a.channel}`)} · ${a.who}`), h("div", {}, a.reason || ""),
      ...ACTIVITY_FIELDS.filter((k) => a[k]).map((k) => h("div", { class: "small" }, h("i", {}, `${t(`activity.${k}`)}: `),
        k === "appointment_at" ? fmt.dateTime(a[k]) : a[k]))))),
    activityForm);
}

const newTicket = $("#new-ticket");
newTicket.intake_channel.replaceChildren(...options(INTAKE_CHANNELS, "intake_channels", "customer_line"));
newTicket.requested_resolution.replaceChildren(h("option", { value: "" }, t("common.not_said")), ...options(RESOLUTIONS, "resolutions"));
$("#new-ticket-for-device").addEventListener("click", () => {
  newTicket.hidden = false;
  newTicket.account_id.value = device?.account_id ?? "";
  newTicket.device_id.value = device?.id ?? "";
  newTicket.title.value = device ? `${device.plate || device.identifier}: ` : "";
  newTicket.scrollIntoView({ block: "nearest" });
  newTicket.title.focus();
});
$("#new-ticket-cancel").addEventListener("click", () => { newTicket.hidden = true; });
newTicket.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#new-ticket-error").textContent = "";
  const f = newTicket;
  const text = (name) => fieldText(f, name);
  try {
    const tk = await api("/api/v1/support/tickets", { method: "POST", body: {
      type: f.type.value, title: f.title.value, account_id: Number(f.account_id.value), device_id: f.device_id.value ? Number(f.device_id.value) : null,
      intake_channel: f.intake_channel.value, reported_by: text("reported_by"), fault_reason: text("fault_reason"),
      requested_resolution: f.requested_resolution.value || null, assignee_id: f.assign_me.checked ? me.id : null,
      activity: { channel: f.channel.value, reason: f.reason.value, contact: text("reported_by") } } });
    f.reset(); f.hidden = true;
    toast(t("tickets.opened_toast", { number: tk.number }));
    await searchTickets(); await openTicket(tk.number);
  } catch (e) { $("#new-ticket-error").textContent = errorText(e); }
});

await Promise.all([loadHealth(), searchTickets()]);
every(30000, () => loadHealth().catch(() => {}));
every(5000, renderSilent);
document.body.dataset.ready = "1";
