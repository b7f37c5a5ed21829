// The login page, in the browser's language (Accept-Language, as config.js tells) unless the
// link to the other language was followed (?lang=); after login the user's own choice applies.
import { ROLE_HOME, $, config, setup, t, language } from "./common.js";

const asked = new URLSearchParams(location.search).get("lang");
await setup(asked || config.language);
const form = $("#login");
const error = $("#login-error");
const other = language() === "es" ? "en" : "es";
const link = $("#other-language");
const query = new URLSearchParams(location.search);
query.set("lang", other);
link.href = `?${query}`;
link.lang = other;
link.textContent = t(`login.switch_${other}`);
form.hidden = false;

// Already logged in: straight to one's own screen.
fetch("/api/v1/me", { credentials: "same-origin" }).then(async (r) => {
  if (r.ok) { const me = await r.json(); location.replace(ROLE_HOME[me.role] || "/console/map"); }
});

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.textContent = "";
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const r = await fetch("/api/v1/auth/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept-Language": language() },
      body: JSON.stringify({ email: form.email.value.trim(), password: form.password.value }),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      error.textContent = r.status === 401 ? t("errors.wrong_login")
        : r.status === 429 ? t("errors.too_many_attempts", { seconds: r.headers.get("Retry-After") || "?" })
        : data.message || t("errors.http", { status: r.status });
      return;
    }
    const next = new URLSearchParams(location.search).get("next");
    const home = ROLE_HOME[data.user.role] || "/console/map";
    // Back to the page asked for when it is this role's (an admin may open any), else the role's own screen.
    const allowed = next && next.startsWith("/console/") && (next === home || data.user.role === "admin");
    location.assign(allowed ? next : home);
  } catch {
    error.textContent = t("errors.network");
  } finally { button.disabled = false; }
});
document.body.dataset.ready = "1";
