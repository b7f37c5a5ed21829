// Support desk (support role): fleet health, device search, the fault checklist followed step
// by step with its evidence, tickets and their activities.
import { api, guard, h, $, fmtTime, ago, toast } from "./common.js";

await guard("support");

const CHANNELS = ["phone", "email", "whatsapp", "sms", "web"];
const STATES = ["open", "in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"];
const channelSelect = (name = "channel") => h("select", { name, "data-testid": "activity-channel" }, CHANNELS.map((c) => h("option", { value: c }, c)));
for (const sel of document.querySelectorAll("select[data-channel]")) sel.replaceChildren(...CHANNELS.map((c) => h("option", { value: c }, c)));

// Fleet health --------------------------------------------------------------------------------
async function loadHealth() {
  const health = await api("/api/v1/support/fleet/health");
  const d = health.devices;
  const card = (key, label) => h("div", { class: `stat ${key}`, "data-testid": `health-${key}` }, h("b", {}, String(d[key] ?? 0)), h("span", {}, label));
  const p = health.platform;
  $("#health").replaceChildren(
    h("div", { class: "stats" }, card("total", "devices"), card("online", "online"), card("gps_not_updated", "no GPS update"),
      card("offline", "offline"), card("never_reported", "never reported"), card("account_blocked", "account blocked")),
    h("p", { class: `platform ${p.status}`, "data-testid": "platform" }, `Platform ${p.status}`,
      p.newest_report_age_s !== null ? ` · newest report ${Math.round(p.newest_report_age_s)} s ago` : "",
      p.problems.length ? `: ${p.problems.join("; ")}` : ""),
    h("p", { class: "muted" }, "Open tickets: ", Object.entries(health.open_tickets).map(([k, n]) => `${k} ${n}`).join(", ") || "none"));
  $("#silent").replaceChildren(...health.silent.map((s) => h("li", {}, h("b", {}, s.plate || s.identifier), ` ${s.account_name || ""} · silent ${ago(s.last_received_at)}`,
    s.open_ticket ? h("span", { class: "pill warn" }, s.open_ticket) : null)));
  if (!health.silent.length) $("#silent").append(h("li", { class: "muted" }, "none"));
}
$("#health-refresh").addEventListener("click", () => loadHealth().catch((e) => toast(e.message, "error")));

// Devices and the checklist -------------------------------------------------------------------
let device = null, polling = null;

$("#search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const hits = await api(`/api/v1/support/devices?q=${encodeURIComponent(ev.target.q.value.trim())}`);
    $("#hits").replaceChildren(...hits.map((d) => h("li", { class: "hit", "data-testid": "device-hit", "data-device-id": d.id, tabindex: 0, onclick: () => openDevice(d) },
      h("b", {}, d.plate || "(no plate)"), ` ${d.identifier} · ${d.protocol} · ${d.account_name || "no account"}`,
      h("div", { class: "muted small" }, `last report ${ago(d.last_received_at)} · line ${d.line_status}${d.open_tickets ? ` · ${d.open_tickets} open ticket(s)` : ""}`))));
    if (!hits.length) $("#hits").append(h("li", { class: "muted" }, "no device matches"));
  } catch (e) { toast(e.message, "error"); }
});

async function openDevice(d) {
  device = d;
  $("#device").hidden = false;
  $("#device-title").textContent = `${d.plate || d.identifier}`;
  const facts = [["Terminal", `${d.identifier} (${d.protocol})`], ["Line", `${d.msisdn || "—"} (${d.line_status})`],
    ["Account", `${d.account_name || "—"} (${d.account_status || "—"})`], ["Report interval", `${d.report_interval_s} s`],
    ["Last report", d.last_received_at ? `${fmtTime(d.last_received_at)} (${ago(d.last_received_at)})` : "never"], ["Open tickets", String(d.open_tickets)]];
  $("#device-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  $("#run-view").replaceChildren();
  await loadRuns();
}

async function loadRuns() {
  const runs = await api(`/api/v1/support/devices/${device.id}/diagnostics?limit=10`);
  $("#runs").replaceChildren(...runs.map((r) => h("li", { tabindex: 0, onclick: () => renderRun(r) },
    `${fmtTime(r.started_at)} · ${r.status}${r.verdict ? ` · ${r.verdict}` : ""} · ${r.requested_by}`)));
  if (!runs.length) $("#runs").append(h("li", { class: "muted" }, "none yet"));
}

function evidence(ev) {
  const entries = Object.entries(ev || {});
  if (!entries.length) return null;
  return h("details", { class: "evidence" }, h("summary", {}, "evidence"),
    h("dl", { class: "facts" }, entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))])));
}

function renderRun(run) {
  const steps = run.steps.map((s) => h("li", { class: `step ${s.status}`, "data-testid": "step", "data-step": s.name, "data-status": s.status },
    h("span", { class: "badge" }, s.status), h("b", {}, s.name), h("div", {}, s.summary), evidence(s.evidence)));
  const pending = run.status === "queued" || run.status === "running";
  $("#run-view").replaceChildren(
    h("div", { class: `run ${run.status}`, "data-testid": "run", "data-status": run.status, "data-run-id": run.id },
      h("p", {}, `Run #${run.id} · `, h("span", { "data-testid": "run-status" }, run.status), pending ? h("span", { class: "spinner" }) : null),
      h("ol", { class: "steps" }, steps),
      run.verdict ? h("div", { class: `verdict ${run.verdict}`, "data-testid": "verdict", "data-verdict": run.verdict },
        h("b", {}, `Verdict: ${run.verdict}`), h("p", {}, run.explanation || "")) : null,
      run.ticket ? h("p", { "data-testid": "run-ticket" }, "Ticket ", h("a", { href: "#", onclick: (e) => { e.preventDefault(); openTicket(run.ticket.number); } }, run.ticket.number),
        ` (${run.ticket.type}, ${run.ticket.state}): give this number to the customer.`) : null));
}

$("#run").addEventListener("click", async () => {
  if (!device) return;
  clearTimeout(polling);
  try {
    let run = await api(`/api/v1/support/devices/${device.id}/diagnostics`, { method: "POST" });
    renderRun(run);
    const poll = async () => {
      run = await api(`/api/v1/support/diagnostics/${run.id}`);
      renderRun(run);
      if (run.status === "queued" || run.status === "running") polling = setTimeout(poll, 700);
      else { loadRuns(); loadHealth(); if (run.ticket) searchTickets(); }
    };
    polling = setTimeout(poll, 500);
  } catch (e) { toast(e.message, "error"); }
});

// Tickets --------------------------------------------------------------------------------------
async function searchTickets() {
  const f = $("#ticket-search");
  const q = f.q.value.trim();
  const params = new URLSearchParams({ limit: "50" });
  if (f.open_only.checked) params.set("open_only", "true");
  if (/^AVL-/i.test(q)) params.set("number", q); else if (q.length >= 2) params.set("q", q);
  const tickets = await api(`/api/v1/support/tickets?${params}`);
  $("#tickets").replaceChildren(...tickets.map((t) => h("li", { class: `ticket-item ${t.state}`, "data-testid": "ticket-item", "data-number": t.number, tabindex: 0, onclick: () => openTicket(t.number) },
    h("b", {}, t.number), ` ${t.state} · ${t.type}`, h("div", { class: "small" }, t.title),
    h("div", { class: "muted small" }, `${t.account_name || ""} ${t.plate ? "· " + t.plate : ""} · opened ${ago(t.opened_at)}${t.sla_due_at ? " · due " + fmtTime(t.sla_due_at) : ""}`))));
  if (!tickets.length) $("#tickets").append(h("li", { class: "muted" }, "no tickets"));
}
$("#ticket-search").addEventListener("submit", (ev) => { ev.preventDefault(); searchTickets().catch((e) => toast(e.message, "error")); });

async function openTicket(ref) {
  const t = await api(`/api/v1/support/tickets/${encodeURIComponent(ref)}`);
  const panel = $("#ticket");
  panel.hidden = false;
  const next = STATES.filter((s) => s !== t.state);
  const stateForm = h("form", { class: "row", "data-testid": "ticket-state" },
    h("select", { name: "state" }, next.map((s) => h("option", { value: s }, s))), h("input", { name: "note", placeholder: "note" }),
    h("button", { type: "submit" }, "Change state"));
  stateForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await api(`/api/v1/support/tickets/${t.number}/state`, { method: "POST", body: { state: stateForm.state.value, note: stateForm.note.value || null } }); await openTicket(t.number); searchTickets(); }
    catch (e) { toast(e.message, "error"); }
  });
  const field = (name, label, attrs = {}) => h("label", {}, label, h(attrs.rows ? "textarea" : "input", { name, ...attrs, "data-testid": `activity-${name}` }));
  const activityForm = h("form", { class: "stack card", "data-testid": "activity-form" }, h("h4", {}, "Add an activity"),
    h("label", {}, "Channel ", channelSelect()), field("reason", "Reason", { required: true }), field("supplied", "Supplied"),
    field("pending", "Pending"), field("solution", "Solution"), field("protocol_applied", "Protocol applied"),
    field("appointment_at", "Appointment", { type: "datetime-local" }), field("notes", "Notes", { rows: 3 }),
    h("button", { type: "submit", "data-testid": "activity-save" }, "Add activity"));
  activityForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [k, v] of new FormData(activityForm)) if (v) body[k] = k === "appointment_at" ? new Date(v).toISOString() : v;
    try { await api(`/api/v1/support/tickets/${t.number}/activities`, { method: "POST", body }); toast("activity added"); await openTicket(t.number); }
    catch (e) { toast(e.message, "error"); }
  });
  panel.replaceChildren(
    h("h3", { "data-testid": "ticket-number" }, `${t.number} · ${t.state}`), h("p", {}, t.title),
    h("dl", { class: "facts" }, [["Type", `${t.type} / ${t.category}`], ["Account", t.account_name || "—"], ["Vehicle", t.plate || t.identifier || "—"],
      ["Opened", fmtTime(t.opened_at)], ["SLA due", fmtTime(t.sla_due_at)], ["Recurrence of", t.recurrence_of ? `#${t.recurrence_of}` : "—"],
      ["Dead on arrival", t.dead_on_arrival ? "yes: replace, not repair" : "no"]].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    stateForm,
    h("h4", {}, "Activities"),
    h("ol", { class: "activities", "data-testid": "activities" }, t.activities.map((a) => h("li", { "data-testid": "activity" },
      h("div", { class: "muted small" }, `${fmtTime(a.at)} · ${a.channel} · ${a.who}`), h("div", {}, a.reason || ""),
      ...[["supplied", a.supplied], ["pending", a.pending], ["solution", a.solution], ["protocol", a.protocol_applied],
          ["appointment", a.appointment_at && fmtTime(a.appointment_at)], ["notes", a.notes]]
        .filter(([, v]) => v).map(([k, v]) => h("div", { class: "small" }, h("i", {}, `${k}: `), v))))),
    activityForm);
}

const newTicket = $("#new-ticket");
$("#new-ticket-for-device").addEventListener("click", () => {
  newTicket.hidden = false;
  newTicket.account_id.value = device?.account_id ?? "";
  newTicket.device_id.value = device?.id ?? "";
  newTicket.title.value = device ? `${device.plate || device.identifier}: ` : "";
  newTicket.title.focus();
});
$("#new-ticket-cancel").addEventListener("click", () => { newTicket.hidden = true; });
newTicket.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#new-ticket-error").textContent = "";
  const f = newTicket;
  try {
    const t = await api("/api/v1/support/tickets", { method: "POST", body: {
      type: f.type.value, title: f.title.value, account_id: Number(f.account_id.value), device_id: f.device_id.value ? Number(f.device_id.value) : null,
      activity: { channel: f.channel.value, reason: f.reason.value } } });
    f.reset(); f.hidden = true;
    toast(`ticket ${t.number} opened: give this number to the customer`);
    await searchTickets(); await openTicket(t.number);
  } catch (e) { $("#new-ticket-error").textContent = e.message; }
});

await Promise.all([loadHealth(), searchTickets()]);
setInterval(() => loadHealth().catch(() => {}), 30000);
document.body.dataset.ready = "1";
