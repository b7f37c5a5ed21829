// The console's words and figures in the user's language: i18next over the server's message
// catalogues (avl/i18n/<lang>/console.json, served at /console/i18n/<lang>/console.json), and
// Intl for dates, numbers and units. Spanish (Venezuela) unless the user chose English.
import i18next from "../vendor/i18next/i18next.js";

export const LANGUAGES = ["es", "en"];
const LOCALES = { es: "es-VE", en: "en-US" };
// The console's own words, the support center's ticket words (states, types, categories), the
// billing's (causes of an account's state) and the fault checklist's step summaries.
const NAMESPACES = ["console", "tickets", "billing", "checklist"];
// Keys asked for but not in the catalogue (the browser tests fail on any).
const missing = (window.avlMissingKeys = window.avlMissingKeys || []);
let current = "es";

export const language = () => current;
export const locale = () => LOCALES[current];

export async function setup(lang) {
  current = LANGUAGES.includes(lang) ? lang : "es";
  const bundles = {};
  await Promise.all(NAMESPACES.map(async (ns) => {
    const r = await fetch(`/console/i18n/${current}/${ns}.json`, { credentials: "same-origin" });
    if (!r.ok) throw new Error(`/console/i18n/${current}/${ns}.json: HTTP ${r.status}`);
    bundles[ns] = await r.json();
  }));
  await i18next.init({
    lng: current, fallbackLng: false, ns: NAMESPACES, defaultNS: "console",
    resources: { [current]: bundles },
    interpolation: { escapeValue: false }, // the console writes text nodes, never HTML
    saveMissing: true, missingKeyHandler: (_lngs, _ns, key) => { missing.push(key); },
  });
  document.documentElement.lang = LOCALES[current];
  translate(document);
}

export const t = (key, params) => i18next.t(key, params);
export const has = (key) => i18next.exists(key);

// Static markup: data-i18n="<key>" gives the text, data-i18n-<attribute>="<key>" an attribute.
const ATTRIBUTES = ["placeholder", "title", "aria-label"];
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const attr of ATTRIBUTES)
    for (const el of root.querySelectorAll(`[data-i18n-${attr}]`)) el.setAttribute(attr, t(el.getAttribute(`data-i18n-${attr}`)));
}

// Figures ---------------------------------------------------------------------------------------
const cache = new Map();
function numberFormat(options) {
  const key = current + JSON.stringify(options);
  if (!cache.has(key)) cache.set(key, new Intl.NumberFormat(LOCALES[current], options));
  return cache.get(key);
}
const unit = (value, name, digits = 0) =>
  numberFormat({ style: "unit", unit: name, unitDisplay: "short", maximumFractionDigits: digits }).format(value);
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

export const fmt = {
  number: (v, digits = 0) => (isNumber(v) ? numberFormat({ maximumFractionDigits: digits }).format(v) : "—"),
  speed: (kmh) => (isNumber(kmh) ? unit(Math.round(kmh), "kilometer-per-hour") : "—"),
  distance: (m) => (!isNumber(m) ? "—" : Math.abs(m) < 1000 ? unit(Math.round(m), "meter") : unit(m / 1000, "kilometer", 1)),
  volts: (mv) => (isNumber(mv) ? t("units.volts", { value: fmt.number(mv / 1000, 1) }) : "—"),
  percent: (share) => (isNumber(share) ? numberFormat({ style: "percent", maximumFractionDigits: 0 }).format(share) : "—"),
  degrees: (v) => (isNumber(v) ? numberFormat({ minimumFractionDigits: 5, maximumFractionDigits: 5 }).format(v) : "—"),
  // An amount of money (the API gives it as a decimal string): always two decimals.
  amount: (v) => (isNumber(Number(v)) && v !== null ? numberFormat({ minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(Number(v)) : "—"),
  // A span of time: "45 s", "12 min", "3 h 5 min", "2 d 4 h".
  duration(s) {
    if (!isNumber(s)) return "—";
    s = Math.max(0, s);
    if (s < 90) return unit(Math.round(s), "second");
    if (s < 5400) return unit(Math.round(s / 60), "minute");
    const parts = s < 172800 ? [[Math.floor(s / 3600), "hour"], [Math.round((s % 3600) / 60), "minute"]]
      : [[Math.floor(s / 86400), "day"], [Math.round((s % 86400) / 3600), "hour"]];
    return parts.filter(([n], i) => i === 0 || n > 0).map(([n, u]) => unit(n, u)).join(" ");
  },
  dateTime(iso) {
    if (!iso) return "—";
    return new Intl.DateTimeFormat(LOCALES[current], { dateStyle: "short", timeStyle: "medium" }).format(new Date(iso));
  },
  // A day ("2026-09-07", as the API gives dates) is that calendar day wherever the browser is, not UTC midnight.
  date(iso) {
    if (!iso) return "—";
    const day = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
    const d = day ? new Date(Number(day[1]), Number(day[2]) - 1, Number(day[3])) : new Date(iso);
    return new Intl.DateTimeFormat(LOCALES[current], { dateStyle: "medium" }).format(d);
  },
  // Today's times without the date, older ones with it.
  when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (d.toDateString() !== new Date().toDateString()) return fmt.dateTime(iso);
    return new Intl.DateTimeFormat(LOCALES[current], { timeStyle: "medium" }).format(d);
  },
  // "hace 40 s" / "40 sec. ago"; "—" for never.
  ago(iso, now = Date.now()) {
    if (!iso) return t("common.never");
    const s = Math.max(0, (now - new Date(iso).getTime()) / 1000);
    const rtf = new Intl.RelativeTimeFormat(LOCALES[current], { numeric: "always", style: "short" });
    if (s < 90) return rtf.format(-Math.round(s), "second");
    if (s < 5400) return rtf.format(-Math.round(s / 60), "minute");
    if (s < 172800) return rtf.format(-Math.round(s / 3600), "hour");
    return rtf.format(-Math.round(s / 86400), "day");
  },
  // For a datetime-local input: the local wall-clock time.
  inputDateTime(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  },
};
