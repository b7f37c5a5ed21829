// Fleet map (client role): vehicles by status, clustered where they crowd and labelled without
// overlaps, moving live; statuses that age in the browser; a vehicle's details with its history,
// exports and locate-now; zones drawn and edited as polygons; alerts; the account's tickets and
// the certified installation centers.
/* global L */
import { api, guard, h, $, $$, esc, t, fmt, toast, errorText, facts, every, config, isLeaving } from "./common.js";

await guard("client");

// A vehicle silent for this many report intervals is offline, as the API says (api/routes/fleet.py).
const STATUS_INTERVALS = 3;
const RANK = { online: 0, gps_not_updated: 1, offline: 2, account_blocked: 3 };
// The schematic basemap has no streets: past this zoom it says so (a tile server has them).
const STREET_ZOOM = 15;
const tileUrl = config.tileUrl;
const MAX_FIT_ZOOM = tileUrl ? 17 : 14;

// The map: a light vector basemap shipped with the app; raster tiles only when the server has a
// tile URL (AVL_CONSOLE_TILE_URL). Only the server's setting: a tile URL from the link would let
// anyone's link make this browser fetch arbitrary same-origin paths with the session cookie.
const map = L.map("map", { zoomControl: true, attributionControl: true, minZoom: 3, maxZoom: 19 }).setView(config.center || [10.485, -66.88], config.zoom || 12);
map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
if (tileUrl) L.tileLayer(tileUrl, { maxZoom: 19, attribution: config.tileAttribution || "" }).addTo(map);
map.createPane("basemap").style.zIndex = 250;
const BASEMAP_STYLE = {
  park: { color: "#9bc49b", weight: 1, fillColor: "#d4ead0", fillOpacity: tileUrl ? 0.15 : 0.9 },
  urban: { color: "#d8d2c4", weight: 1, fillColor: "#f3efe6", fillOpacity: tileUrl ? 0.1 : 0.9 },
  river: { color: "#7fb2e0", weight: 3, opacity: 0.9 },
  road: { color: "#b9b0a0", weight: 3, opacity: 0.9 },
};
try {
  const basemap = await (await fetch("/console/basemap/caracas.geojson")).json();
  L.geoJSON(basemap, {
    pane: "basemap",
    style: (f) => BASEMAP_STYLE[f.properties.kind] || {},
    interactive: false,
    pointToLayer: (f, latlng) => L.marker(latlng, {
      pane: "basemap", interactive: false, keyboard: false,
      icon: L.divIcon({ className: "place-label", html: esc(f.properties.name), iconSize: null }),
    }),
  }).addTo(map);
  map.attributionControl.addAttribution(esc(t("map.basemap_attribution")));
} catch (e) { toast(t("map.basemap_failed", { message: e.message }), "error"); }

// The shipped basemap is schematic: at street zoom, say where street detail comes from.
const StreetNote = L.Control.extend({
  options: { position: "bottomleft" },
  onAdd() { return h("div", { class: "map-note", "data-testid": "street-note", hidden: true }, t("map.street_note")); },
});
const streetNote = new StreetNote().addTo(map);
function updateStreetNote() { streetNote.getContainer().hidden = Boolean(tileUrl) || map.getZoom() < STREET_ZOOM; }
map.on("zoomend", updateStreetNote);
updateStreetNote();

// Vehicles -----------------------------------------------------------------------------------
const vehicles = new Map(); // device id -> {v, marker, li, status}
let selected = null;

const label = (v) => v.plate || v.identifier;

// The status as it is now: a vehicle that stopped reporting turns offline in the browser, without
// waiting for a push or a reload (the API's rule, from the last report and the report interval).
// Never fresher than what the API said, unless a newer report arrived since.
function statusNow(entry, now = Date.now()) {
  const v = entry.v;
  if (v.status === "account_blocked") return v.status;
  const since = now - STATUS_INTERVALS * v.report_interval_s * 1000;
  const heard = v.last_report_at ? Date.parse(v.last_report_at) : null;
  const p = v.position;
  let status = "online";
  if (heard === null || heard < since) status = "offline";
  else if (!p || !p.valid || Date.parse(p.time) < since) status = "gps_not_updated";
  if (v.last_report_at === entry.fetchedHeard && RANK[status] < RANK[entry.fetchedStatus]) status = entry.fetchedStatus;
  return status;
}

function statusDetail(entry, status) {
  const v = entry.v;
  if (status === "account_blocked") return t("status_detail.account_blocked");
  if (status === "offline") return v.last_report_at ? t("status_detail.offline", { duration: fmt.duration(STATUS_INTERVALS * v.report_interval_s) })
    : t("status_detail.never");
  if (status === "gps_not_updated") return !v.position ? t("status_detail.no_position")
    : !v.position.valid ? t("status_detail.invalid_fix") : t("status_detail.old_fix");
  return t("status_detail.online");
}

function decorate(entry) {
  const el = entry.marker && entry.marker.getElement();
  if (!el) return;
  const p = entry.v.position;
  el.dataset.deviceId = entry.v.id;
  el.dataset.status = entry.status;
  el.setAttribute("data-testid", "vehicle-marker");
  if (p) { el.dataset.lat = p.latitude; el.dataset.lon = p.longitude; el.dataset.time = p.time; }
  el.title = `${label(entry.v)} · ${t(`status.${entry.status}`)}`;
  el.setAttribute("aria-label", el.title);
  el.className = el.className.replace(/\bstatus-\S+/g, "").trim() + ` status-${entry.status}`;
  el.classList.toggle("selected", selected === entry.v.id);
}

const markerIcon = (v) => L.divIcon({ className: "vehicle-marker", html: `<span class="plate">${esc(label(v))}</span>`,
                                       iconSize: [16, 16], iconAnchor: [8, 8] });

// Crowded vehicles gather in a cluster that says how many and which; it opens when zoomed in.
const cluster = L.markerClusterGroup({
  maxClusterRadius: 40, showCoverageOnHover: false, spiderfyOnMaxZoom: false, disableClusteringAtZoom: 16,
  iconCreateFunction(c) {
    const children = c.getAllChildMarkers();
    const worst = children.reduce((w, m) => Math.max(w, RANK[vehicles.get(m.options.deviceId)?.status] ?? 0), 0);
    const plates = children.map((m) => m.options.plate).sort().join(", ");
    c.options.title = t("map.cluster", { count: children.length, plates }); // the marker's name (Leaflet sets it)
    return L.divIcon({ className: `vehicle-cluster worst-${Object.keys(RANK)[worst]}`, iconSize: [34, 34],
                       html: `<span data-testid="vehicle-cluster" data-count="${children.length}">${children.length}</span>` });
  },
}).addTo(map);

function renderListItem(entry) {
  const v = entry.v, p = v.position;
  if (!entry.li) {
    entry.button = h("button", { type: "button", class: "item", "data-testid": "vehicle-item", "data-device-id": v.id, onclick: () => select(v.id) });
    entry.li = h("li", {}, entry.button);
  }
  const b = entry.button;
  b.dataset.status = entry.status;
  if (p) { b.dataset.time = p.time; b.dataset.lat = p.latitude; b.dataset.lon = p.longitude; }
  b.setAttribute("aria-pressed", String(selected === v.id));
  entry.li.className = `vehicle-item${selected === v.id ? " selected" : ""}`;
  b.replaceChildren(h("i", { class: `dot ${entry.status}` }), h("b", {}, label(v)),
    h("span", { class: "muted" }, ` ${t(`status.${entry.status}`)}`),
    h("span", { class: "muted small line" }, p ? `${fmt.speed(p.speed_kmh ?? 0)} · ${t("vehicles.last_report", { ago: fmt.ago(v.last_report_at) })}`
      : v.last_report_at ? t("vehicles.last_report", { ago: fmt.ago(v.last_report_at) }) : t("vehicles.no_position")));
  return entry.li;
}

function refresh(entry) {
  const status = statusNow(entry);
  const changed = status !== entry.status;
  entry.status = status;
  if (entry.marker && changed) { cluster.refreshClusters(entry.marker); }
  decorate(entry);
  renderListItem(entry);
  if (selected === entry.v.id) renderDetails();
}

function upsert(v, { fromList = false } = {}) {
  let entry = vehicles.get(v.id);
  if (!entry) { entry = { v }; vehicles.set(v.id, entry); } else entry.v = v;
  if (fromList) { entry.fetchedStatus = v.status; entry.fetchedHeard = v.last_report_at; }
  entry.status = statusNow(entry);
  const p = v.position;
  if (p) {
    if (!entry.marker) {
      entry.marker = L.marker([p.latitude, p.longitude], { icon: markerIcon(v), riseOnHover: true, deviceId: v.id, plate: label(v),
                                                           title: label(v) });
      entry.marker.on("click", () => select(v.id));
      entry.marker.on("add", () => { decorate(entry); scheduleDeclutter(); });
      cluster.addLayer(entry.marker);
    } else {
      entry.marker.setLatLng([p.latitude, p.longitude]);
    }
  }
  refresh(entry);
  return entry;
}

async function loadVehicles() {
  const list = await api("/api/v1/vehicles");
  for (const v of list) upsert(v, { fromList: true });
  $("#vehicle-list").replaceChildren(...[...vehicles.values()].sort((a, b) => label(a.v).localeCompare(label(b.v))).map((e) => e.li));
  document.body.dataset.vehicles = String(list.length);
  scheduleDeclutter();
  return list;
}

function onPositions(positions) {
  for (const p of positions) {
    const entry = vehicles.get(p.device_id);
    if (!entry) continue;
    const { device_id, plate, ...position } = p;
    upsert({ ...entry.v, position, last_report_at: p.received_at });
  }
  scheduleDeclutter();
}

// Labels never overlap: a plate that would cover another (or a place name) is hidden, its
// vehicle still drawn and named on hover and to screen readers. The selected vehicle's first.
let declutterTimer = null;
function scheduleDeclutter() { if (!declutterTimer) declutterTimer = setTimeout(() => { declutterTimer = null; declutter(); }, 150); }
const overlaps = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
function declutter() {
  const taken = $$(".vehicle-cluster").map((el) => el.getBoundingClientRect());
  const plates = $$(".vehicle-marker .plate").sort((a, b) => Number(b.closest(".selected") !== null) - Number(a.closest(".selected") !== null));
  for (const el of plates) {
    el.classList.remove("label-hidden");
    const box = el.getBoundingClientRect();
    if (taken.some((o) => overlaps(o, box))) el.classList.add("label-hidden"); else taken.push(box);
  }
  for (const el of $$(".place-label")) {
    el.classList.remove("label-hidden");
    const box = el.getBoundingClientRect();
    if (taken.some((o) => overlaps(o, box))) el.classList.add("label-hidden");
  }
}
map.on("zoomend moveend", scheduleDeclutter);
cluster.on("animationend", scheduleDeclutter);

// Details, history ---------------------------------------------------------------------------
let historyLayer = null, cursor = null, points = [];

function renderDetails() {
  const entry = vehicles.get(selected);
  if (!entry) return;
  const v = entry.v, p = v.position || {};
  $("#details").hidden = false;
  $("#details-title").textContent = `${label(v)} · ${v.vehicle_kind ? t(`kinds.${v.vehicle_kind}`) : t("kinds.other")}`;
  $("#details-status").replaceChildren(h("i", { class: `dot ${entry.status}` }), h("b", {}, t(`status.${entry.status}`)), `: ${statusDetail(entry, entry.status)}`);
  $("#details-status").dataset.status = entry.status;
  $("#details-facts").replaceChildren(facts([
    [t("details.last_report"), v.last_report_at ? `${fmt.ago(v.last_report_at)} (${fmt.when(v.last_report_at)})` : t("common.never")],
    [t("details.position"), p.latitude !== undefined ? `${fmt.degrees(p.latitude)}, ${fmt.degrees(p.longitude)}` : "—"],
    [t("details.speed"), fmt.speed(p.speed_kmh)],
    [t("details.ignition"), p.ignition === true ? t("common.on") : p.ignition === false ? t("common.off") : "—"],
    [t("details.power"), p.power_mv ? fmt.volts(p.power_mv) : "—"],
    [t("details.terminal"), `${v.identifier} (${v.protocol})`],
    [t("details.interval"), fmt.duration(v.report_interval_s)],
  ], { "data-testid": "details-facts" }));
}

function period() {
  const hours = Number($("#history-span").value);
  const to = new Date(Date.now() + 60_000), from = new Date(to.getTime() - hours * 3600_000);
  return `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
}

function updateExports() {
  for (const a of $$(".exports a")) {
    a.href = `/api/v1/vehicles/${selected}/export?format=${a.dataset.format}&${period()}`;
    a.setAttribute("data-testid", `export-${a.dataset.format}`);
    a.setAttribute("aria-label", t("history.export_as", { format: a.textContent }));
  }
}

// Nothing of the previous vehicle stays: its track, the slider's position and its words.
function clearHistory() {
  if (historyLayer) { historyLayer.remove(); historyLayer = null; }
  cursor = null; points = [];
  const slider = $("#history-slider");
  slider.max = "0"; slider.value = "0"; slider.disabled = true;
  $("#slider-info").textContent = "";
  const info = $("#history-info");
  info.textContent = ""; delete info.dataset.points;
}

function select(id) {
  const changed = selected !== id;
  selected = id;
  for (const e of vehicles.values()) { decorate(e); renderListItem(e); }
  if (changed) { clearHistory(); clearLocate(); }
  renderDetails();
  updateExports();
  const e = vehicles.get(id);
  if (e && e.marker) cluster.zoomToShowLayer(e.marker, () => { decorate(e); scheduleDeclutter(); });
  if (window.matchMedia("(max-width: 760px)").matches) $("#details").scrollIntoView({ block: "start" });
  loadHistory();
  loadLocatePrice();
  loadLatestLocate(id);
}

$("#details-close").addEventListener("click", () => {
  selected = null; clearHistory(); clearLocate();
  $("#details").hidden = true;
  for (const e of vehicles.values()) { decorate(e); renderListItem(e); }
});

async function loadHistory() {
  const id = selected;
  clearHistory();
  const info = $("#history-info");
  info.textContent = t("common.loading");
  try {
    const q = period();
    const [hist, trips] = await Promise.all([
      api(`/api/v1/vehicles/${id}/history?${q}&valid_only=true&max_points=5000`),
      api(`/api/v1/vehicles/${id}/trips?${q}`)]);
    if (id !== selected) return;
    points = hist.points;
    historyLayer = L.layerGroup().addTo(map);
    if (points.length) {
      const line = L.polyline(points.map((pt) => [pt.latitude, pt.longitude]),
                              { color: "#1565c0", weight: 4, opacity: 0.8, className: "history-track" }).addTo(historyLayer);
      L.circleMarker([points[0].latitude, points[0].longitude], { radius: 6, color: "#2e7d32", fillOpacity: 1, className: "history-start" })
        .bindTooltip(t("history.start", { time: fmt.when(points[0].time) })).addTo(historyLayer);
      for (const s of trips.stops) {
        L.circleMarker([s.latitude, s.longitude], { radius: 7, color: "#6a1b9a", fillColor: "#ce93d8", fillOpacity: 0.9, className: "stop-marker" })
          .bindTooltip(t(s.ignition_off ? "history.stop_ignition_off" : "history.stop",
                         { from: fmt.when(s.start), to: fmt.when(s.end), duration: fmt.duration(s.duration_s) }))
          .addTo(historyLayer);
      }
      map.fitBounds(line.getBounds(), { padding: [40, 40], maxZoom: MAX_FIT_ZOOM, animate: false });
      const slider = $("#history-slider");
      slider.max = String(points.length - 1); slider.value = slider.max; slider.disabled = false;
      moveCursor();
    }
    info.textContent = t("history.summary", { reports: fmt.number(hist.count), trips: fmt.number(trips.trips.length), stops: fmt.number(trips.stops.length) });
    info.dataset.points = String(hist.count);
  } catch (e) { if (id === selected) info.textContent = errorText(e); }
}

function moveCursor() {
  const pt = points[Number($("#history-slider").value)];
  if (!pt || !historyLayer) return;
  if (!cursor || !historyLayer.hasLayer(cursor))
    cursor = L.circleMarker([pt.latitude, pt.longitude], { radius: 8, color: "#e65100", fillColor: "#ffcc80", fillOpacity: 1, className: "history-cursor" }).addTo(historyLayer);
  cursor.setLatLng([pt.latitude, pt.longitude]);
  const ignition = pt.ignition === null || pt.ignition === undefined ? "—" : pt.ignition ? t("common.on") : t("common.off");
  $("#slider-info").textContent = t("history.point", { time: fmt.when(pt.time), speed: fmt.speed(pt.speed_kmh), ignition });
}

$("#history-slider").addEventListener("input", moveCursor);
$("#history-load").addEventListener("click", loadHistory);
$("#history-span").addEventListener("change", () => { updateExports(); loadHistory(); });

// Locate now ---------------------------------------------------------------------------------
// Billable: the button says what it costs when the API tells the price; the outcome follows the
// request until the terminal answers (its report moves the marker) or the request expires.
let locating = null;

function clearLocate() {
  clearTimeout(locating);
  locating = null;
  const out = $("#locate-outcome");
  out.textContent = ""; delete out.dataset.status; delete out.dataset.error; delete out.dataset.requestId;
  $("#locate").disabled = false;
}

// The price and, for a pre-paid account, the balance still available (the account's billing).
async function loadLocatePrice() {
  const el = $("#locate-price");
  el.textContent = "";
  let account;
  try { account = await api("/api/v1/billing/account"); } catch { return; }
  const price = fmt.amount(account.price_locate);
  el.textContent = account.billing === "pre_paid"
    ? `${t("locate.price", { price })} ${t("locate.available", { available: fmt.amount(account.available) })}`
    : t("locate.price", { price });
}

function showLocate(req) {
  const out = $("#locate-outcome");
  out.dataset.status = req.status;
  out.dataset.requestId = req.id;
  const p = req.position;
  const words = {
    pending: () => t("locate.pending", { time: fmt.when(req.requested_at), until: fmt.when(req.answer_by) }),
    answered: () => (p ? t("locate.answered", { time: fmt.when(req.answered_at), position: `${fmt.degrees(p.latitude)}, ${fmt.degrees(p.longitude)}` })
      : t("locate.answered_no_position", { time: fmt.when(req.answered_at) }))
      + (req.billable && req.price !== null ? ` · ${t("locate.charged", { price: fmt.amount(req.price) })}` : ""),
    expired: () => t("locate.expired"),
    failed: () => t("locate.failed"),
    cancelled: () => t("locate.cancelled"),
  };
  out.textContent = (words[req.status] || words.expired)();
}

// Follows a request until the terminal answers (its position moves the marker) or it ends.
function followLocate(id, req) {
  showLocate(req);
  $("#locate").disabled = req.status === "pending";
  if (req.status !== "pending") return;
  const poll = async () => {
    if (selected !== id) return;
    try { req = await api(`/api/v1/locate-requests/${req.id}`); } catch (e) { $("#locate-outcome").textContent = errorText(e); return; }
    if (selected !== id) return;
    showLocate(req);
    if (req.status === "pending") { locating = setTimeout(poll, 2000); return; }
    locating = null;
    $("#locate").disabled = false;
    loadLocatePrice();
    if (req.position) upsert({ ...vehicles.get(id).v, position: req.position, last_report_at: req.position.received_at });
  };
  locating = setTimeout(poll, 1500);
}

// Back on a vehicle: its request still pending (or answered in the last hour) is shown again.
async function loadLatestLocate(id) {
  let latest;
  try { [latest] = await api(`/api/v1/vehicles/${id}/locate-requests?limit=1`); } catch { return; }
  if (!latest || selected !== id || locating) return;
  if (latest.status === "pending" || Date.now() - Date.parse(latest.requested_at) < 3600_000) followLocate(id, latest);
}

$("#locate").addEventListener("click", async () => {
  const id = selected;
  clearLocate();
  const out = $("#locate-outcome");
  $("#locate").disabled = true;
  try { followLocate(id, await api(`/api/v1/vehicles/${id}/locate`, { method: "POST" })); }
  catch (e) {
    // 402 no_balance (a pre-paid account without balance available), 409 not locatable, 403 suspended: the API's one line.
    out.dataset.status = "error";
    out.dataset.error = e.code || "";
    out.textContent = errorText(e);
    $("#locate").disabled = false;
  }
});

// Zones: polygons drawn and edited on the map (Leaflet-Geoman), or typed as vertices ---------------
const zoneLayer = L.layerGroup().addTo(map);
let zones = [];
const form = $("#zone-form");
let preview = null;

map.pm.setLang("avl", { tooltips: { firstVertex: t("zones.tip_first"), continueLine: t("zones.tip_next"),
                                    finishPoly: t("zones.tip_finish") } }, "en");
map.pm.setGlobalOptions({ snappable: false, allowSelfIntersection: false });

const zoneStyle = (kind) => (kind === "allowed" ? { color: "#2e7d32", fillOpacity: 0.12, weight: 2 }
  : { color: "#c62828", fillOpacity: 0.15, weight: 2, dashArray: "6 4" });

async function loadZones() {
  zones = await api("/api/v1/geofences");
  zoneLayer.clearLayers();
  const ul = $("#zone-list");
  ul.replaceChildren();
  for (const z of zones) {
    L.geoJSON(z.geometry, { pmIgnore: true, style: { ...zoneStyle(z.kind), className: "zone-shape" } })
      .bindTooltip(`${esc(z.name)} (${esc(t(`zones.kind_short_${z.kind}`))})`).addTo(zoneLayer);
    ul.append(h("li", { "data-testid": "zone-item", "data-zone-id": z.id },
      h("i", { class: `dot zone-${z.kind}` }), h("b", {}, z.name), h("span", { class: "muted" }, ` ${t(`zones.kind_short_${z.kind}`)}`), " ",
      h("button", { type: "button", class: "link", "data-testid": "zone-edit", "aria-label": t("zones.edit_named", { name: z.name }), onclick: () => editZone(z) }, t("zones.edit")),
      h("button", { type: "button", class: "link danger", "aria-label": t("zones.delete_named", { name: z.name }), onclick: () => deleteZone(z) }, t("zones.delete"))));
  }
  if (!zones.length) ul.append(h("li", { class: "muted" }, t("zones.none")));
  document.body.dataset.zones = String(zones.length);
}

const ringOf = (geometry) => (geometry.type === "Polygon" ? geometry.coordinates[0] : geometry.coordinates[0][0]);
const coordsText = (latlngs) => latlngs.map((ll) => `${ll.lat.toFixed(6)}, ${ll.lng.toFixed(6)}`).join("\n");

function editZone(z) {
  form.id.value = z.id; form.name.value = z.name; form.kind.value = z.kind; form.dwell_s.value = z.dwell_s || "";
  form.coords.value = ringOf(z.geometry).slice(0, -1).map(([lon, lat]) => `${lat}, ${lon}`).join("\n");
  $("#zone-form-title").textContent = t("zones.editing", { name: z.name });
  showPreview({ fit: true });
  form.name.focus();
}

async function deleteZone(z) {
  if (!confirm(t("zones.confirm_delete", { name: z.name }))) return;
  try { await api(`/api/v1/geofences/${z.id}`, { method: "DELETE" }); toast(t("zones.deleted", { name: z.name })); await loadZones(); }
  catch (e) { toast(errorText(e), "error"); }
}

function parseCoords(text) {
  const pts = text.split(/\n|;/).map((s) => s.trim()).filter(Boolean).map((s) => {
    const [lat, lon] = s.split(/[ ,]+/).map(Number);
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) throw new Error(t("zones.bad_pair", { text: s }));
    return [lon, lat];
  });
  if (pts.length < 3) throw new Error(t("zones.too_few"));
  return [...pts, pts[0]];
}

// The zone being edited, with its vertices to drag on the map (and a handle between each two to add one).
function showPreview({ fit = false } = {}) {
  if (preview) { preview.pm.disable(); preview.remove(); preview = null; }
  let ring;
  try { ring = parseCoords(form.coords.value); } catch { return; /* incomplete */ }
  preview = L.polygon(ring.slice(0, -1).map(([lon, lat]) => [lat, lon]), { color: "#ef6c00", dashArray: "4 4", fillOpacity: 0.1, className: "zone-preview" }).addTo(map);
  preview.pm.enable({ allowSelfIntersection: false, snappable: false });
  preview.on("pm:edit pm:vertexadded pm:vertexremoved", () => { form.coords.value = coordsText(preview.getLatLngs()[0]); labelVertices(); });
  labelVertices();
  if (fit) map.fitBounds(preview.getBounds(), { padding: [60, 60], maxZoom: MAX_FIT_ZOOM, animate: false });
}

// Geoman's vertex handles are buttons without names: give them one.
function labelVertices() {
  $$(".marker-icon:not(.marker-icon-middle)", map.getContainer()).forEach((el, i) => { el.setAttribute("aria-label", t("zones.vertex", { n: i + 1 })); el.setAttribute("data-testid", "zone-vertex"); });
  $$(".marker-icon-middle", map.getContainer()).forEach((el) => el.setAttribute("aria-label", t("zones.add_vertex")));
}

function clearForm() {
  form.reset(); form.id.value = ""; $("#zone-error").textContent = "";
  $("#zone-form-title").textContent = t("zones.new");
  if (preview) { preview.pm.disable(); preview.remove(); preview = null; }
  stopDrawing();
}

function stopDrawing() { map.pm.disableDraw(); $("#zone-draw").classList.remove("active"); $("#zone-draw").setAttribute("aria-pressed", "false"); }

$("#zone-draw").addEventListener("click", () => {
  if (preview) { preview.pm.disable(); preview.remove(); preview = null; }
  map.pm.enableDraw("Polygon", { snappable: false, allowSelfIntersection: false, templineStyle: { color: "#ef6c00" }, hintlineStyle: { color: "#ef6c00", dashArray: "4 4" } });
  $("#zone-draw").classList.add("active");
  $("#zone-draw").setAttribute("aria-pressed", "true");
  toast(t("zones.draw_help"));
});
map.on("pm:create", ({ layer }) => {
  form.coords.value = coordsText(layer.getLatLngs()[0]);
  layer.remove();
  stopDrawing();
  showPreview();
});
form.coords.addEventListener("input", () => showPreview());
$("#zone-cancel").addEventListener("click", clearForm);

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#zone-error").textContent = "";
  let body;
  try {
    body = { name: form.name.value.trim(), kind: form.kind.value, geometry: { type: "Polygon", coordinates: [parseCoords(form.coords.value)] },
             dwell_s: form.dwell_s.value ? Number(form.dwell_s.value) : null };
  } catch (e) { $("#zone-error").textContent = e.message; return; }
  const id = form.id.value;
  try {
    const z = await api(id ? `/api/v1/geofences/${id}` : "/api/v1/geofences", { method: id ? "PUT" : "POST", body });
    toast(t("zones.saved", { name: z.name }));
    clearForm();
    await loadZones();
  } catch (e) { $("#zone-error").textContent = errorText(e); }
});

// Alerts -------------------------------------------------------------------------------------
const alertText = (a) => t(`alerts.kind_${a.kind}`, { vehicle: a.plate || `#${a.device_id}`, zone: a.geofence_name });

function alertItem(a) {
  return h("li", { "data-testid": "alert-item", "data-alert-id": a.id, class: a.acknowledged_at ? "acked" : "new" },
    h("div", {}, alertText(a)), h("div", { class: "muted small" }, fmt.dateTime(a.time)),
    a.acknowledged_at ? null : h("button", { type: "button", class: "link", onclick: async (e) => {
      try { await api(`/api/v1/geofence-alerts/${a.id}/acknowledge`, { method: "POST" }); e.target.closest("li").className = "acked"; e.target.remove(); countAlerts(); }
      catch (err) { toast(errorText(err), "error"); } } }, t("alerts.acknowledge")));
}

function countAlerts() {
  const n = $$("#alert-list li.new").length;
  $("#alert-count").textContent = n ? String(n) : "";
}

async function loadAlerts() {
  const alerts = await api("/api/v1/geofence-alerts?limit=50");
  $("#alert-list").replaceChildren(...alerts.map(alertItem));
  if (!alerts.length) $("#alert-list").append(h("li", { class: "muted empty" }, t("alerts.none")));
  countAlerts();
}

function onAlert(a) {
  const list = $("#alert-list");
  list.querySelector(".empty")?.remove();
  if (!list.querySelector(`[data-alert-id="${a.id}"]`)) list.prepend(alertItem(a));
  countAlerts();
  toast(alertText(a), "alert");
}

// The account's tickets and the certified centers --------------------------------------------------
// What the support center tells the customer (GET /api/v1/tickets: in the user's language).
async function loadClientTickets() {
  const ul = $("#client-tickets");
  let tickets;
  try { tickets = await api("/api/v1/tickets?limit=50"); } catch (e) { ul.replaceChildren(h("li", { class: "muted" }, errorText(e))); return; }
  ul.replaceChildren(...tickets.map((tk) => h("li", {}, h("button", { type: "button", class: "item", "data-testid": "client-ticket-item", "data-number": tk.number, onclick: () => openClientTicket(tk.number) },
    h("b", {}, tk.number), " ", h("span", { class: `pill state-${tk.state}` }, tk.state_label),
    h("span", { class: "small line" }, [tk.plate, tk.what].filter(Boolean).join(": ")),
    h("span", { class: "muted small line" }, t("client_tickets.opened", { ago: fmt.ago(tk.opened_at) }))))));
  if (!tickets.length) ul.append(h("li", { class: "muted" }, t("client_tickets.none")));
}

async function openClientTicket(number) {
  const panel = $("#client-ticket");
  try {
    const tk = await api(`/api/v1/tickets/${encodeURIComponent(number)}`);
    panel.hidden = false;
    panel.replaceChildren(h("h3", { "data-testid": "client-ticket-number" }, `${tk.number} · ${tk.state_label}`),
      h("p", {}, [tk.plate, tk.what].filter(Boolean).join(": ")),
      h("p", { class: tk.bring_in_overdue ? "card bad" : "card", "data-testid": "client-ticket-instruction" }, tk.instruction),
      facts([[t("tickets.opened"), fmt.dateTime(tk.opened_at)],
             tk.bring_in_due_at ? [t("client_tickets.bring_in_by"), fmt.dateTime(tk.bring_in_due_at)] : null,
             tk.center ? [t("client_tickets.center"), [tk.center.name, tk.center.address, tk.center.phone, tk.center.hours].filter(Boolean).join(" · ")] : null]),
      tk.messages.length ? h("h4", {}, t("client_tickets.messages")) : null,
      tk.messages.length ? h("ol", { class: "activities" }, tk.messages.map((m) => h("li", {},
        h("div", { class: "muted small" }, `${fmt.dateTime(m.at)} · ${t(`channels.${m.channel}`)}`), h("div", {}, m.text)))) : null);
  } catch (e) { toast(errorText(e), "error"); }
}

// Nearest first to the selected vehicle (its last position), else by name.
async function loadCenters() {
  const ul = $("#center-list");
  let centers;
  try { centers = await api(`/api/v1/installation-centers${selected ? `?device_id=${selected}` : ""}`); }
  catch (e) { ul.replaceChildren(h("li", { class: "muted" }, errorText(e))); return; }
  const from = selected && vehicles.get(selected) ? label(vehicles.get(selected).v) : null;
  $("#centers-from").textContent = from ? t("centers.from_vehicle", { vehicle: from }) : "";
  ul.replaceChildren(...centers.map((c) => h("li", { "data-testid": "center-item", "data-center-id": c.id },
    h("b", {}, c.name), c.distance_km !== null ? h("span", { class: "muted" }, ` · ${fmt.distance(c.distance_km * 1000)}`) : null,
    c.address ? h("span", { class: "small line" }, c.address) : null,
    h("span", { class: "muted small line" }, [c.phone, c.hours].filter(Boolean).join(" · ")),
    h("button", { type: "button", class: "link", "aria-label": t("centers.show_named", { name: c.name }), onclick: () => showCenter(c) }, t("centers.show")))));
  if (!centers.length) ul.append(h("li", { class: "muted" }, t("centers.none")));
}

// Tabs ---------------------------------------------------------------------------------------
const LOADERS = { tickets: loadClientTickets, centers: loadCenters };
function showTab(name, { focus = false } = {}) {
  for (const tab of $$("[role=tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (LOADERS[name]) LOADERS[name]();
}
for (const tab of $$("[role=tab]")) {
  tab.addEventListener("click", () => showTab(tab.dataset.tab));
  tab.addEventListener("keydown", (ev) => {
    const tabs = $$("[role=tab]"), i = tabs.indexOf(tab);
    const next = ev.key === "ArrowRight" ? tabs[(i + 1) % tabs.length] : ev.key === "ArrowLeft" ? tabs[(i - 1 + tabs.length) % tabs.length] : null;
    if (next) { ev.preventDefault(); showTab(next.dataset.tab, { focus: true }); }
  });
}

// Live ---------------------------------------------------------------------------------------
function setLive(state, text, kind) {
  const el = $("#live-state");
  el.textContent = text; el.className = `pill ${kind || ""}`; el.dataset.state = state;
}

// The stream is opened with a single-use ticket (valid 30 s), never with the session token in the URL.
async function connect() {
  let ticket;
  try { ticket = await api("/api/v1/live/tickets", { method: "POST" }); }
  catch (e) {
    if (e.status === 403) { setLive("refused", errorText(e), "bad"); return; }
    setLive("reconnecting", t("live.reconnecting"), "warn"); setTimeout(connect, 3000); return;
  }
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${ticket.url}`);
  let refused = false;
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "ready") setLive("live", t("live.live"), "ok");
    else if (m.type === "positions") onPositions(m.positions);
    else if (m.type === "alert") onAlert(m);
    else if (m.type === "geofence") {
      const v = vehicles.get(m.device_id);
      toast(t(`zones.event_${m.event}`, { vehicle: v ? label(v.v) : `#${m.device_id}`, zone: m.geofence_name }));
    }
    else if (m.type === "resync") loadVehicles();
    else if (m.type === "error") {
      refused = true; setLive("refused", m.message, "bad");
      // Logged out, revoked or password changed elsewhere: back to the login page.
      if (m.error === "unauthenticated" && !isLeaving()) location.assign("/console/login?next=" + encodeURIComponent(location.pathname));
    }
  };
  ws.onclose = () => { if (!refused && !isLeaving()) { setLive("reconnecting", t("live.reconnecting"), "warn"); setTimeout(connect, 3000); } };
}

await Promise.all([loadVehicles(), loadZones(), loadAlerts()]);
// The whole fleet in view to begin with.
const located = [...vehicles.values()].filter((e) => e.v.position).map((e) => [e.v.position.latitude, e.v.position.longitude]);
if (located.length) map.fitBounds(located, { padding: [30, 30], maxZoom: 14, animate: false });
connect();
// Statuses and "x s ago" age here every few seconds; the list is fetched again now and then for
// what the stream does not carry (a suspended account, a new vehicle).
every(Number(config.ageMs || 5000), () => { for (const e of vehicles.values()) refresh(e); scheduleDeclutter(); });
every(Number(config.refreshMs || 60000), () => loadVehicles().catch(() => {}));
window.avlMap = { map, vehicles, select, cluster };
document.body.dataset.ready = "1";
