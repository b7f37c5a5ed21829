// Shared by every console page: API calls with the session cookie, the role guard, the header.
export const ROLE_HOME = { client: "/console/map", support: "/console/support", installer: "/console/certify" };

export class ApiError extends Error {
  constructor(status, code, message, body) { super(message); this.status = status; this.code = code; this.body = body; }
}

export async function api(path, { method = "GET", body, raw = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, init);
  if (r.status === 401) { location.assign("/console/login?next=" + encodeURIComponent(location.pathname)); throw new ApiError(401, "unauthenticated", "not logged in"); }
  if (raw) return r;
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data && data.error, (data && data.message) || r.statusText, data);
  return data;
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
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function toast(message, kind = "info") {
  let box = $("#toasts");
  if (!box) { box = h("div", { id: "toasts", role: "status", "aria-live": "polite" }); document.body.append(box); }
  const t = h("div", { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 10000 : 5000);
}

// The page's guard: the user behind the session, or off to the login page. A user of another
// role sees "not for your role" (the API refuses that role's calls anyway).
export async function guard(role) {
  let me;
  try { me = await api("/api/v1/me"); } catch (e) { if (e.status !== 401) showFatal(e.message); return halt(); }
  renderHeader(me);
  if (me.role !== role && me.role !== "admin") {
    const main = $("main");
    main.replaceChildren(h("section", { class: "denied", "data-testid": "denied" },
      h("h2", {}, "Not for your role"),
      h("p", {}, `This screen is for the ${role} role; you are logged in as ${me.role}.`),
      ROLE_HOME[me.role] ? h("p", {}, h("a", { href: ROLE_HOME[me.role] }, "Go to your screen")) : null));
    document.body.classList.add("denied-page");
    return halt();
  }
  return me;
}

// Stops the page's module where it stands (its screen is not shown), without an uncaught error.
const halt = () => new Promise(() => {});

function showFatal(message) { $("main").replaceChildren(h("p", { class: "error" }, message)); }

function renderHeader(me) {
  const header = $("header.top");
  if (!header) return;
  const links = [["client", "/console/map", "Fleet map"], ["support", "/console/support", "Support desk"],
                 ["installer", "/console/certify", "Certification"]]
    .filter(([role]) => me.role === role || me.role === "admin")
    .map(([, href, label]) => h("a", { href, class: location.pathname === href ? "active" : null }, label));
  header.replaceChildren(
    h("span", { class: "brand" }, "AVL console"), h("nav", {}, links),
    h("span", { class: "who", "data-testid": "who" }, `${me.name} · ${me.role}`),
    h("button", { type: "button", class: "link", "data-testid": "logout", onclick: logout }, "Log out"));
}

export async function logout() {
  try { await api("/api/v1/auth/logout", { method: "POST" }); } catch { /* already out */ }
  location.assign("/console/login");
}
