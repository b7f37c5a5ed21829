// Certification (installer role): start a certification for an installed terminal, watch each
// live check turn green or red, record the customer's sign-off, print the certificate.
import { api, guard, h, $, fmtTime, toast } from "./common.js";

await guard("installer");

const LABEL = { reporting_interval: "Reports at its interval", gps_fix: "Valid GPS fix", ignition: "Ignition on and off seen",
  supply_voltage: "Supply voltage as declared", sms_round_trip: "Answers the status SMS", at_center: "At the installation center" };
let current = null, polling = null, chosen = null;

async function loadInstallations() {
  const list = await api("/api/v1/installers/installations?limit=100");
  $("#installations").replaceChildren(...list.map((i) => h("li", { class: "hit", tabindex: 0, "data-testid": "installation", "data-device-id": i.device_id, onclick: () => choose(i) },
    h("b", {}, i.plate || i.identifier), ` ${i.identifier} · ${i.protocol}`, i.certified ? h("span", { class: "pill ok" }, "certified") : null,
    h("div", { class: "muted small" }, `${i.account_name || ""} · ${i.supply_voltage_v ?? "?"} V ${i.vehicle_kind || ""} · installed ${i.installed_at || "?"}`))));
  if (!list.length) $("#installations").append(h("li", { class: "muted" }, "no installations registered at this center"));
}

async function loadCerts() {
  const list = await api("/api/v1/installers/certifications?limit=20");
  $("#certs").replaceChildren(...list.map((c) => h("li", { class: `hit result-${c.result}`, tabindex: 0, "data-testid": "cert-item", "data-result": c.result, onclick: () => follow(c.id) },
    h("b", {}, `#${c.id} ${c.plate || c.identifier}`), " ", h("span", { class: `pill ${c.result === "pass" ? "ok" : c.result === "fail" ? "bad" : "warn"}` }, c.result),
    h("div", { class: "muted small" }, fmtTime(c.started_at)))));
  if (!list.length) $("#certs").append(h("li", { class: "muted" }, "none yet"));
}

function choose(i) {
  chosen = i;
  $("#start").hidden = false;
  $("#start-title").textContent = `${i.plate || i.identifier} · ${i.identifier} (${i.protocol})`;
}

$("#start-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!chosen) return;
  try {
    const c = await api("/api/v1/installers/certifications", { method: "POST", body: { device_id: chosen.device_id, radius_m: Number(ev.target.radius_m.value) } });
    toast(`certification #${c.id} started: ask the customer to switch the ignition on, then off`);
    follow(c.id);
    loadCerts();
  } catch (e) { toast(e.message, "error"); }
});

async function follow(id) {
  clearTimeout(polling);
  const poll = async () => {
    try {
      const c = await api(`/api/v1/installers/certifications/${id}`);
      render(c);
      if (c.result === "in_progress") polling = setTimeout(poll, 1000);
    } catch (e) { toast(e.message, "error"); }
  };
  await poll();
}

function render(c) {
  const same = current && current.id === c.id;
  current = c;
  const panel = $("#cert");
  panel.hidden = false;
  const red = c.checks.some((ch) => ch.status === "red");
  const checks = h("ul", { class: "checks", "data-testid": "checks" }, c.checks.map((ch) => h("li", { class: `check ${ch.status}`, "data-testid": "check", "data-check": ch.name, "data-status": ch.status },
    h("span", { class: "badge" }, ch.status), h("b", {}, LABEL[ch.name] || ch.name), h("div", {}, ch.summary),
    Object.keys(ch.evidence || {}).length ? h("details", { class: "evidence" }, h("summary", {}, "evidence"), h("pre", {}, JSON.stringify(ch.evidence, null, 1))) : null)));
  const head = h("div", {}, h("h2", {}, `Certification #${c.id} · ${c.plate || c.identifier}`),
    h("p", {}, `${c.account_name || ""} · ${c.center_name} · radius ${c.radius_m} m · started ${fmtTime(c.started_at)} · `,
      h("span", { class: `pill ${c.result === "pass" ? "ok" : c.result === "fail" ? "bad" : "warn"}`, "data-testid": "cert-result", "data-result": c.result }, c.result)));
  let action = null;
  if (c.result === "in_progress") {
    // Keep what the installer is typing across polls.
    const old = same ? panel.querySelector("form.signoff") : null;
    const form = old || h("form", { class: "signoff stack card", "data-testid": "signoff" }, h("h3", {}, "Customer's sign-off"),
      h("label", {}, "Signed by (customer) ", h("input", { name: "customer_signed_by", required: true, minlength: 2, "data-testid": "signer" })),
      h("label", {}, "Identity document ", h("input", { name: "customer_document", "data-testid": "signer-document" })),
      h("button", { type: "submit", "data-testid": "sign-off" }, ""), h("p", { class: "error", role: "alert", "data-testid": "signoff-error" }));
    const button = form.querySelector("button");
    button.textContent = c.all_green ? "Record the customer's signature (pass)" : red ? "Record the result: failed, correct the installation" : "Waiting for the checks…";
    button.disabled = !c.all_green && !red;
    button.className = red && !c.all_green ? "danger" : "";
    if (!old) form.addEventListener("submit", (ev) => signOff(ev, form));
    action = form;
  } else if (c.result === "pass") {
    action = h("div", { class: "card" }, h("p", {}, `Signed by ${c.customer_signed_by}${c.customer_document ? ` (${c.customer_document})` : ""} on ${fmtTime(c.signed_at)}. The customer is asked to change the access password.`),
      h("a", { class: "button", href: `/api/v1/installers/certifications/${c.id}/certificate`, target: "_blank", "data-testid": "certificate" }, "Print the certificate"));
  } else {
    action = h("div", { class: "card bad" }, h("p", { "data-testid": "fail-note" }, c.outcome_note || "failed"),
      h("p", {}, "Correct the installation, then start a new certification."));
  }
  panel.replaceChildren(head, checks, action);
}

async function signOff(ev, form) {
  ev.preventDefault();
  const err = form.querySelector(".error");
  err.textContent = "";
  try {
    const c = await api(`/api/v1/installers/certifications/${current.id}/sign-off`, { method: "POST",
      body: { customer_signed_by: form.customer_signed_by.value.trim(), customer_document: form.customer_document.value.trim() || null } });
    clearTimeout(polling);
    render(c);
    toast("certification passed");
  } catch (e) {
    err.textContent = e.message;
    if (e.code === "certification_failed") { clearTimeout(polling); await follow(current.id); }
  }
  loadCerts(); loadInstallations();
}

await Promise.all([loadInstallations(), loadCerts()]);
document.body.dataset.ready = "1";
