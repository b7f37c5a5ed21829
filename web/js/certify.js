// Certification (installer role): register a new terminal and its vehicle, start a certification,
// watch each live check turn green or red, record the customer's sign-off, print the certificate.
import { api, guard, h, $, $$, t, fmt, toast, errorText, fieldText, options, config } from "./common.js";
import { evidence } from "./evidence.js";

await guard("installer");

const KINDS = ["car", "van", "truck", "bus", "motorcycle", "other"];
// What comes next for an installation (24 V vehicles and motorcycles wait for the Engineering Unit's review).
const STAGE_PILL = { certified: "ok", engineering_review: "warn", engineering_rejected: "bad", certification: "", replaced: "" };
let current = null, polling = null, chosen = null;

const pill = (result) => h("span", { class: `pill ${result === "pass" ? "ok" : result === "fail" ? "bad" : "warn"}` }, t(`certify.result_${result}`));

// One screen at a time in the right-hand column: the hint, the registration form, a certification.
function show(which) {
  for (const id of ["hint", "register", "start", "cert"]) $(`#${id}`).hidden = !which.includes(id);
}

async function loadInstallations() {
  const list = await api("/api/v1/installers/installations?limit=100");
  $("#installations").replaceChildren(...list.map((i) => h("li", {}, h("button", { type: "button", class: "item", "data-testid": "installation", "data-device-id": i.device_id, onclick: () => choose(i) },
    h("b", {}, i.plate || i.identifier), ` ${i.identifier} · ${i.protocol} `,
    i.stage ? h("span", { class: `pill ${STAGE_PILL[i.stage] || ""}`, "data-testid": "stage", "data-stage": i.stage }, t(`stages.${i.stage}`))
      : i.certified ? h("span", { class: "pill ok" }, t("stages.certified")) : null,
    h("span", { class: "muted small line" }, [i.account_name, i.supply_voltage_v ? `${i.supply_voltage_v} V` : null,
      i.vehicle_kind ? t(`kinds.${i.vehicle_kind}`) : null, i.installed_at ? t("certify.installed", { date: fmt.date(i.installed_at) }) : null].filter(Boolean).join(" · "))))));
  if (!list.length) $("#installations").append(h("li", { class: "muted" }, t("certify.no_installations")));
}

async function loadCerts() {
  const list = await api("/api/v1/installers/certifications?limit=20");
  $("#certs").replaceChildren(...list.map((c) => h("li", {}, h("button", { type: "button", class: `item result-${c.result}`, "data-testid": "cert-item", "data-result": c.result, onclick: () => follow(c.id) },
    h("b", {}, `#${c.id} ${c.plate || c.identifier}`), " ", pill(c.result),
    h("span", { class: "muted small line" }, fmt.dateTime(c.started_at))))));
  if (!list.length) $("#certs").append(h("li", { class: "muted" }, t("certify.no_certs")));
}

function choose(i) {
  chosen = i;
  clearTimeout(polling);
  show(["start"]);
  $("#start-title").textContent = `${i.plate || i.identifier} · ${i.identifier} (${i.protocol})`;
  $("#start").scrollIntoView({ block: "nearest" });
}

$("#start-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!chosen) return;
  try {
    const c = await api("/api/v1/installers/certifications", { method: "POST", body: { device_id: chosen.device_id, radius_m: Number(ev.target.radius_m.value) } });
    toast(t("certify.started", { id: c.id }));
    follow(c.id);
    loadCerts();
  } catch (e) { toast(errorText(e), "error"); }
});

async function follow(id) {
  clearTimeout(polling);
  const poll = async () => {
    try {
      const c = await api(`/api/v1/installers/certifications/${id}`);
      render(c);
      if (c.result === "in_progress") polling = setTimeout(poll, 1000);
    } catch (e) { toast(errorText(e), "error"); }
  };
  await poll();
}

let shown = "";

function render(c) {
  const same = current && current.id === c.id;
  current = c;
  const panel = $("#cert");
  show(["cert"]);
  // A poll that changed nothing leaves the screen alone (what the installer opened stays open).
  const state = JSON.stringify(c);
  if (same && state === shown) return;
  shown = state;
  const opened = new Set($$("[data-testid=check] details[open]", panel).map((d) => d.closest("[data-testid=check]").dataset.check));
  const checks = h("ul", { class: "checks", "data-testid": "checks" }, c.checks.map((ch) => h("li", { class: `check ${ch.status}`, "data-testid": "check", "data-check": ch.name, "data-status": ch.status },
    h("span", { class: "badge" }, t(`check_status.${ch.status}`)), h("b", {}, t(`checks.${ch.name}.title`)),
    h("div", { class: "muted small" }, t(`checks.${ch.name}.explain`)),
    h("div", { class: "summary" }, ch.summary), evidence(ch.evidence, opened.has(ch.name)))));
  const head = h("div", {}, h("h2", {}, t("certify.cert_title", { id: c.id, vehicle: c.plate || c.identifier })),
    h("p", {}, [c.account_name, c.center_name, t("certify.radius_is", { radius: fmt.distance(c.radius_m) }),
                t("certify.started_at", { when: fmt.when(c.started_at) })].filter(Boolean).join(" · "), " ",
      h("span", { class: `pill ${c.result === "pass" ? "ok" : c.result === "fail" ? "bad" : "warn"}`, "data-testid": "cert-result", "data-result": c.result }, t(`certify.result_${c.result}`))));
  let action = null;
  if (c.result === "in_progress") {
    // Keep what the installer is typing across polls.
    const old = same ? panel.querySelector("form.signoff") : null;
    const form = old || h("form", { class: "signoff stack card", "data-testid": "signoff" }, h("h3", {}, t("certify.signoff_title")),
      h("fieldset", { class: "inline-choice", "data-testid": "customer-check" }, h("legend", {}, t("certify.customer_saw")),
        h("label", { class: "inline" }, h("input", { type: "radio", name: "customer_saw_vehicle", value: "yes", "data-testid": "customer-saw-yes" }), " ", t("common.yes")),
        h("label", { class: "inline" }, h("input", { type: "radio", name: "customer_saw_vehicle", value: "no", "data-testid": "customer-saw-no" }), " ", t("common.no"))),
      h("label", {}, t("certify.customer_note"), " ", h("input", { name: "customer_check_note", maxlength: 500, autocomplete: "off", "data-testid": "customer-note" })),
      h("label", {}, t("certify.signer"), " ", h("input", { name: "customer_signed_by", required: true, minlength: 2, autocomplete: "off", "data-testid": "signer" })),
      h("label", {}, t("certify.document"), " ", h("input", { name: "customer_document", autocomplete: "off", "data-testid": "signer-document" })),
      h("p", { class: "muted small", "data-testid": "signoff-state" }),
      h("div", { class: "row" },
        h("button", { type: "submit", value: "pass", "data-testid": "sign-off" }, t("certify.sign_pass")),
        h("button", { type: "submit", value: "fail", class: "danger", "data-testid": "record-fail" }, t("certify.record_fail"))),
      h("p", { class: "error", role: "alert", "data-testid": "signoff-error" }));
    if (!old) {
      form.addEventListener("submit", (ev) => signOff(ev, form));
      form.addEventListener("change", () => actions(form, current));
    }
    actions(form, c);
    action = form;
  } else if (c.result === "pass") {
    action = h("div", { class: "card" }, h("p", {}, t("certify.passed_note", { signer: c.customer_signed_by + (c.customer_document ? ` (${c.customer_document})` : ""), when: fmt.dateTime(c.signed_at) })),
      h("a", { class: "button", href: `/api/v1/installers/certifications/${c.id}/certificate`, target: "_blank", "data-testid": "certificate" }, t("certify.print")));
  } else {
    action = h("div", { class: "card bad" }, h("p", { "data-testid": "fail-note" }, c.outcome_note || t("certify.result_fail")),
      h("p", {}, t("certify.failed_next")));
  }
  panel.replaceChildren(head, checks, action);
}

// Passing needs every check green and the customer having seen the vehicle on the web platform;
// recording a failure needs a red check, or the customer not having seen it. Pending checks allow neither.
function actions(form, c) {
  const red = c.checks.some((ch) => ch.status === "red");
  const saw = form.customer_saw_vehicle.value;
  form.querySelector("[data-testid=sign-off]").disabled = !(c.all_green && saw === "yes");
  form.querySelector("[data-testid=record-fail]").disabled = !(red || (c.all_green && saw === "no"));
  form.querySelector("[data-testid=signoff-state]").textContent = red ? t("certify.some_red")
    : c.all_green ? t(saw === "yes" ? "certify.all_green" : saw === "no" ? "certify.customer_missed" : "certify.ask_customer")
    : t("certify.waiting");
}

async function signOff(ev, form) {
  ev.preventDefault();
  const err = form.querySelector("[data-testid=signoff-error]");
  err.textContent = "";
  try {
    const c = await api(`/api/v1/installers/certifications/${current.id}/sign-off`, { method: "POST",
      body: { customer_signed_by: form.customer_signed_by.value.trim(), customer_document: form.customer_document.value.trim() || null,
              customer_saw_vehicle: form.customer_saw_vehicle.value === "yes", customer_check_note: form.customer_check_note.value.trim() || null } });
    clearTimeout(polling);
    render(c);
    toast(t("certify.passed"));
  } catch (e) {
    err.textContent = errorText(e);
    if (e.code === "certification_failed") { clearTimeout(polling); await follow(current.id); }
  }
  loadCerts(); loadInstallations();
}

// Registration ----------------------------------------------------------------------------------
const reg = $("#register");
reg.protocol.replaceChildren(h("option", { value: "" }, t("register.choose_protocol")), ...(config.protocols || []).map((p) => h("option", { value: p }, p)));
reg.kind.replaceChildren(...options(KINDS, "kinds", "car"));

$("#register-open").addEventListener("click", () => {
  clearTimeout(polling);
  show(["register"]);
  reg.installed_at.value = fmt.inputDateTime(new Date()).slice(0, 10);
  reg.identifier.focus();
});
$("#register-cancel").addEventListener("click", () => { reg.reset(); $("#register-error").textContent = ""; show(["hint"]); });
reg.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#register-error").textContent = "";
  const f = reg;
  const text = (name) => fieldText(f, name);
  try {
    const i = await api("/api/v1/installers/installations", { method: "POST", body: {
      identifier: text("identifier"), protocol: f.protocol.value, msisdn: text("msisdn"), plate: text("plate").toUpperCase(),
      supply_voltage_v: Number(f.supply_voltage_v.value), kind: f.kind.value, account_id: Number(f.account_id.value),
      installed_at: text("installed_at"), report_interval_s: Number(f.report_interval_s.value), model: text("model"), firmware: text("firmware") } });
    f.reset();
    toast(t("register.saved", { plate: i.plate, identifier: i.identifier }));
    if (i.seen_unknown) toast(t("register.seen_before", { count: i.seen_unknown.count, when: fmt.dateTime(i.seen_unknown.last_seen) }));
    await loadInstallations();
    choose(i);
  } catch (e) { $("#register-error").textContent = errorText(e); }
});

show(["hint"]);
await Promise.all([loadInstallations(), loadCerts()]);
document.body.dataset.ready = "1";
