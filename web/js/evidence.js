// The evidence of a checklist step or a certification check as a person reads it: a label per key
// from the catalogue (evidence.<key>) and each value in its unit, in the user's language.
import { h, t, has, fmt } from "./common.js";

// Values that are words from a known set, in the catalogue under evidence_values.<key>.<value>.
const WORDS = new Set(["state", "moving_interval_source", "parked_interval_source", "database", "broker", "status",
                       "line_status", "billing", "via", "receipt"]);
// Keys whose values are the terminal's own (its status reply): shown as they came.
const VERBATIM = new Set(["reply_fields"]);

// Words another catalogue already has: the billing's causes of an account's state.
const ELSEWHERE = { status_cause: "billing:cause" };
// A word the catalogue knows is translated; free text (an error line) is shown as it came.
function word(key, v) {
  const found = `${ELSEWHERE[key] || `evidence_values.${key}`}.${v}`;
  return has(found) ? t(found) : String(v);
}

// One value by what its key says it is: _s a duration, _mv a voltage, _m a distance, _at a time...
export function value(key, v) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v === "boolean") return t(v ? "common.yes" : "common.no");
  if (key === "findings" && Array.isArray(v)) return v.length ? v.map((f) => t(`findings.${f}`)).join("; ") : t("findings.none");
  if (key === "accepted_mv" && Array.isArray(v)) return `${fmt.volts(v[0])} – ${fmt.volts(v[1])}`;
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "object" && x !== null ? table(x) : value(key, x))) : "—";
  if (typeof v === "object") return table(v, { verbatim: VERBATIM.has(key) });
  if (WORDS.has(key) || ELSEWHERE[key]) return word(key, v);
  if (typeof v === "number") {
    if (/_mv(_median)?$/.test(key)) return fmt.volts(v);
    if (/_v$/.test(key)) return fmt.volts(v * 1000);
    if (/_s$/.test(key)) return fmt.duration(v);
    if (/(_m|^distance_m|^radius_m)$/.test(key)) return fmt.distance(v);
    if (/_share$/.test(key)) return fmt.percent(v);
    if (key === "latitude" || key === "longitude") return fmt.degrees(v);
    if (/_bytes$/.test(key)) return `${fmt.number(v)} B`;
    return fmt.number(v, 2);
  }
  if (/(_at|_time)$/.test(key) && !Number.isNaN(Date.parse(v))) return fmt.dateTime(v);
  return String(v);
}

// A definition list of an evidence object; keys without a label in the catalogue are named as
// they are (the tests fail on them: every key the server writes has its label).
export function table(ev, { verbatim = false } = {}) {
  const entries = Object.entries(ev || {});
  return h("dl", { class: "facts evidence-facts" }, entries.flatMap(([k, v]) => [
    h("dt", { "data-key": k }, verbatim ? k : t(`evidence.${k}`)), h("dd", {}, value(k, v))]));
}

// The evidence behind a summary, folded.
export function evidence(ev, open = false) {
  if (!ev || !Object.keys(ev).length) return null;
  return h("details", { class: "evidence", open }, h("summary", {}, t("evidence.title")), table(ev));
}
