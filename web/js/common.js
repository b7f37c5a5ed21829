// Shared by every console page: API calls with the session cookie, the user's language, the role
// guard, the header with the language choice.
import { setup, t, has, fmt, language, translate } from "./i18n.js";

export { t, has, fmt, language, translate };
export const ROLE_HOME = { client: "/console/map", support: "/console/support", installer: "/console/certify" };
export const config = window.AVL_CONSOLE || {};

export class ApiError extends Error {
  constructor(status, code, message, body) { super(message); this.status = status; this.code = code; this.body = body; }
}

export async function api(path, { method = "GET", body, raw = false } = {}) {
  // The API's own one-line messages follow the console's language where it has them.
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", "Accept-Language": language() } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  let r;
  try { r = await fetch(path, init); }
  catch { throw new ApiError(0, "network", t("errors.network")); }
  if (r.status === 401 && !path.startsWith("/api/v1/auth/")) {
    if (!leaving) location.assign("/console/login?next=" + encodeURIComponent(location.pathname));
    throw new ApiError(401, "unauthenticated", t("errors.unauthenticated"));
  }
  if (raw) return r;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const wait = r.headers.get("Retry-After");
    throw new ApiError(r.status, data && data.error, (data && data.message) || `HTTP ${r.status}`, { ...(data || {}), retry_after: wait });
  }
  return data;
}

// What to tell a person about a failed call: the console's words for the errors it knows, else
// the API's own one line (which names the thing).
export function errorText(e) {
  if (!(e instanceof ApiError)) return e && e.message ? e.message : String(e);
  if (e.code && has(`errors.${e.code}`)) return t(`errors.${e.code}`, { seconds: e.body?.retry_after ?? "?", message: e.message });
  return e.message;
}

export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

// A definition list of [label, value] pairs (values may be nodes).
export const facts = (pairs, attrs = {}) => h("dl", { class: "facts", ...attrs },
  pairs.filter(Boolean).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));

// A form field's text, trimmed; null when empty (the API's "not given").
export const fieldText = (form, name) => form[name].value.trim() || null;

// A labelled <select> of values whose words are in the catalogue under `prefix`.
export function options(values, prefix, selected) {
  return values.map((v) => h("option", { value: v, selected: v === selected }, t(`${prefix}.${v}`)));
}

export function toast(message, kind = "info") {
  let box = $("#toasts");
  if (!box) { box = h("div", { id: "toasts", role: "status", "aria-live": "polite" }); document.body.append(box); }
  const el = h("div", { class: `toast ${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 10000 : 5000);
}

// The page's guard: the user behind the session, in the user's language, or off to the login
// page. A user of another role sees "not for your role" (the API refuses that role's calls anyway).
export async function guard(role) {
  let me;
  try { me = await api("/api/v1/me"); }
  catch (e) {
    if (e.status !== 401) { await setup(config.language); showFatal(errorText(e)); }
    return halt();
  }
  await setup(me.language);
  renderHeader(me);
  if (me.password_change_required) { changePassword(); return halt(); }
  if (me.role !== role && me.role !== "admin") {
    const main = $("main");
    main.className = "";
    main.replaceChildren(h("section", { class: "denied", "data-testid": "denied" },
      h("h1", {}, t("guard.denied_title")),
      h("p", {}, t("guard.denied_text", { role: t(`roles.${role}`), mine: t(`roles.${me.role}`) })),
      ROLE_HOME[me.role] ? h("p", {}, h("a", { href: ROLE_HOME[me.role] }, t("guard.go_home"))) : null));
    document.body.classList.add("denied-page");
    document.body.dataset.ready = "1";
    return halt();
  }
  return me;
}

// A session that must change its password first (the password was set by someone else, e.g.
// at certification) gets only this form; the API refuses everything else until it is done.
function changePassword() {
  const error = h("p", { class: "error", role: "alert", "data-testid": "password-error" });
  const form = h("form", { class: "card password-change", "data-testid": "password-change" },
    h("h1", {}, t("password.title")),
    h("p", { class: "muted" }, t("password.why")),
    h("label", {}, t("password.current"), " ", h("input", { name: "current", type: "password", required: true, autocomplete: "current-password", "data-testid": "current-password" })),
    h("label", {}, t("password.new"), " ", h("input", { name: "fresh", type: "password", required: true, minlength: "12", maxlength: "128", autocomplete: "new-password", "data-testid": "new-password" })),
    h("button", { type: "submit", "data-testid": "change-password" }, t("password.submit")), error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      await api("/api/v1/auth/password", { method: "POST", body: { current_password: form.current.value, new_password: form.fresh.value } });
      location.reload();
    } catch (e) { error.textContent = errorText(e); }
  });
  const main = $("main");
  main.className = "";  // not the page's own layout (the map's grid)
  main.replaceChildren(form);
  document.body.dataset.ready = "1";
}

// Stops the page's module where it stands (its screen is not shown), without an uncaught error.
const halt = () => new Promise(() => {});

function showFatal(message) { $("main").replaceChildren(h("p", { class: "error", role: "alert" }, message)); }

function renderHeader(me) {
  const header = $("header.top");
  if (!header) return;
  const links = [["client", "/console/map", "nav.map"], ["support", "/console/support", "nav.support"],
                 ["installer", "/console/certify", "nav.certify"]]
    .filter(([role]) => me.role === role || me.role === "admin")
    .map(([, href, key]) => h("a", { href, "aria-current": location.pathname === href ? "page" : null,
                                     class: location.pathname === href ? "active" : null }, t(key)));
  const choice = me.password_change_required ? null : h("label", { class: "lang" }, h("span", { class: "sr-only" }, t("nav.language")),
    h("select", { "data-testid": "language", "aria-label": t("nav.language"), onchange: (ev) => chooseLanguage(ev.target.value) },
      h("option", { value: "es", selected: language() === "es", lang: "es" }, "Español"),
      h("option", { value: "en", selected: language() === "en", lang: "en" }, "English")));
  header.replaceChildren(
    h("span", { class: "brand" }, t("brand")), h("nav", { "aria-label": t("nav.label") }, links),
    h("span", { class: "who", "data-testid": "who" }, `${me.name} · ${t(`roles.${me.role}`)}`),
    choice,
    h("button", { type: "button", class: "link", "data-testid": "logout", onclick: logout }, t("nav.logout")));
}

async function chooseLanguage(lang) {
  try { await api("/api/v1/auth/language", { method: "PUT", body: { language: lang } }); location.reload(); }
  catch (e) { toast(errorText(e), "error"); }
}

// Set while logging out: what the session's end makes fail (the live stream, a poll) must not
// send back to the login page with this page as the one to return to.
let leaving = false;
export const isLeaving = () => leaving;

export async function logout() {
  leaving = true;
  try { await api("/api/v1/auth/logout", { method: "POST" }); } catch { /* already out */ }
  location.assign("/console/login");
}

// Re-runs `fn` every `ms` while the page is open (statuses and "x s ago" age in the browser).
export function every(ms, fn) { return setInterval(() => { try { fn(); } catch (e) { console.warn(e); } }, ms); }

// Screen-reader-only headings and labels have the class sr-only (console.css).
export const srOnly = (text) => h("span", { class: "sr-only" }, text);

export { setup };
