import { ROLE_HOME, $ } from "./common.js";

const form = $("#login");
const error = $("#login-error");

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
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email: form.email.value.trim(), password: form.password.value }),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { error.textContent = data.message || `login failed (${r.status})`; return; }
    const next = new URLSearchParams(location.search).get("next");
    const home = ROLE_HOME[data.user.role] || "/console/map";
    // Back to the page asked for when it is this role's (an admin may open any), else the role's own screen.
    const allowed = next && next.startsWith("/console/") && (next === home || data.user.role === "admin");
    location.assign(allowed ? next : home);
  } catch (e) {
    error.textContent = e.message;
  } finally { button.disabled = false; }
});
