// Fleet map (client role): vehicles coloured by status and moving live, a vehicle's details,
// its history as a track with stops and a time slider, zones drawn and editable, alerts, exports.
/* global L */
import { api, guard, h, $, esc, fmtTime, ago, toast } from "./common.js";

await guard("client");

const config = window.AVL_CONSOLE || {};
const params = new URLSearchParams(location.search);
const STATUS_LABEL = { online: "online", gps_not_updated: "no GPS update", offline: "offline", account_blocked: "blocked" };

// The map: a light vector basemap shipped with the app; raster tiles only when a URL is configured.
const map = L.map("map", { zoomControl: true, attributionControl: true }).setView(config.center || [10.485, -66.88], config.zoom || 12);
map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
const tileUrl = params.get("tiles") || config.tileUrl;
if (tileUrl) L.tileLayer(tileUrl, { maxZoom: 19, attribution: config.tileAttribution || "" }).addTo(map);
map.createPane("basemap").style.zIndex = 250;
const BASEMAP_STYLE = {
  park: { color: "#9bc49b", weight: 1, fillColor: "#d4ead0", fillOpacity: tileUrl ? 0.15 : 0.9 },
  urban: { color: "#d8d2c4", weight: 1, fillColor: "#f3efe6", fillOpacity: tileUrl ? 0.1 : 0.9 },
  river: { color: "#7fb2e0", weight: 3, opacity: 0.9 },
  road: { color: "#b9b0a0", weight: 3, opacity: 0.9 },
};
try {
  const basemap = await (await fetch(config.basemapUrl || "/console/basemap/caracas.geojson")).json();
  L.geoJSON(basemap, {
    pane: "basemap",
    style: (f) => BASEMAP_STYLE[f.properties.kind] || {},
    interactive: false,
    pointToLayer: (f, latlng) => L.marker(latlng, {
      pane: "basemap", interactive: false, keyboard: false,
      icon: L.divIcon({ className: "place-label", html: esc(f.properties.name), iconSize: null }),
    }),
    onEachFeature: (f, layer) => {
      if (f.properties.kind === "road" || f.properties.kind === "river")
        layer.bindTooltip(esc(f.properties.name), { permanent: false, direction: "center", className: "road-label" });
    },
  }).addTo(map);
  map.attributionControl.addAttribution("Basemap: AVL console (schematic)");
} catch (e) { toast(`basemap not loaded: ${e.message}`, "error"); }

// Vehicles -----------------------------------------------------------------------------------
const vehicles = new Map(); // device id -> {v, marker, li}
let selected = null;

function label(v) { return v.plate || v.identifier; }

function decorate(entry) {
  const el = entry.marker && entry.marker.getElement();
  if (!el) return;
  const p = entry.v.position;
  el.dataset.deviceId = entry.v.id;
  el.dataset.status = entry.v.status;
  el.dataset.testid = "vehicle-marker";
  el.setAttribute("data-testid", "vehicle-marker");
  if (p) { el.dataset.lat = p.latitude; el.dataset.lon = p.longitude; el.dataset.time = p.time; }
  el.title = `${label(entry.v)} · ${STATUS_LABEL[entry.v.status] || entry.v.status}`;
  el.classList.toggle("selected", selected === entry.v.id);
}

function markerIcon(v) {
  return L.divIcon({ className: `vehicle-marker status-${v.status}`, html: `<span>${esc(label(v))}</span>`,
                     iconSize: [16, 16], iconAnchor: [8, 8] });
}

function renderListItem(entry) {
  const v = entry.v, p = v.position;
  const li = entry.li || h("li", { "data-testid": "vehicle-item", "data-device-id": v.id, tabindex: 0,
                                    onclick: () => select(v.id), onkeydown: (e) => { if (e.key === "Enter") select(v.id); } });
  li.className = `vehicle-item${selected === v.id ? " selected" : ""}`;
  li.replaceChildren(h("i", { class: `dot ${v.status}` }), h("b", {}, label(v)),
    h("span", { class: "muted" }, ` ${STATUS_LABEL[v.status] || v.status}`),
    h("div", { class: "muted small" }, p ? `${p.speed_kmh ?? 0} km/h · ${ago(p.time)}` : "no position"));
  entry.li = li;
  return li;
}

function upsert(v) {
  let entry = vehicles.get(v.id);
  if (!entry) { entry = { v }; vehicles.set(v.id, entry); } else entry.v = v;
  const p = v.position;
  if (p) {
    if (!entry.marker) {
      entry.marker = L.marker([p.latitude, p.longitude], { icon: markerIcon(v), riseOnHover: true }).addTo(map);
      entry.marker.on("click", () => select(v.id));
      entry.marker.on("add", () => decorate(entry));
      entry.iconStatus = v.status;
    } else {
      entry.marker.setLatLng([p.latitude, p.longitude]);
      if (entry.iconStatus !== v.status) { entry.marker.setIcon(markerIcon(v)); entry.iconStatus = v.status; }
    }
    decorate(entry);
  }
  renderListItem(entry);
  if (selected === v.id) renderDetails();
  return entry;
}

async function loadVehicles() {
  const list = await api("/api/v1/vehicles");
  const ul = $("#vehicle-list");
  for (const v of list) upsert(v);
  ul.replaceChildren(...[...vehicles.values()].sort((a, b) => label(a.v).localeCompare(label(b.v))).map((e) => e.li));
  document.body.dataset.vehicles = String(list.length);
  return list;
}

function onPositions(positions) {
  for (const p of positions) {
    const entry = vehicles.get(p.device_id);
    if (!entry) continue;
    const { device_id, plate, ...position } = p;
    const v = { ...entry.v, position, last_report_at: p.received_at };
    if (v.status !== "account_blocked") v.status = p.valid ? "online" : "gps_not_updated";
    upsert(v);
  }
}

// Details, history ---------------------------------------------------------------------------
let historyLayer = null, cursor = null, points = [];

function renderDetails() {
  const entry = vehicles.get(selected);
  if (!entry) return;
  const v = entry.v, p = v.position || {};
  $("#details").hidden = false;
  $("#details-title").textContent = `${label(v)} (${v.vehicle_kind || "vehicle"})`;
  const facts = [["Status", `${STATUS_LABEL[v.status] || v.status}: ${v.status_detail}`], ["Terminal", `${v.identifier} (${v.protocol})`],
    ["Last report", v.last_report_at ? `${fmtTime(v.last_report_at)} (${ago(v.last_report_at)})` : "never"],
    ["Position", p.latitude !== undefined ? `${p.latitude.toFixed(5)}, ${p.longitude.toFixed(5)}` : "—"],
    ["Speed", p.speed_kmh !== undefined && p.speed_kmh !== null ? `${p.speed_kmh} km/h` : "—"],
    ["Ignition", p.ignition === true ? "on" : p.ignition === false ? "off" : "—"],
    ["Power", p.power_mv ? `${(p.power_mv / 1000).toFixed(1)} V` : "—"], ["Report interval", `${v.report_interval_s} s`]];
  $("#details-facts").replaceChildren(...facts.flatMap(([k, val]) => [h("dt", {}, k), h("dd", {}, val)]));
}

function period() {
  const hours = Number($("#history-span").value);
  const to = new Date(Date.now() + 60_000), from = new Date(to.getTime() - hours * 3600_000);
  return `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
}

function updateExports() {
  for (const a of document.querySelectorAll(".exports a")) {
    a.href = `/api/v1/vehicles/${selected}/export?format=${a.dataset.format}&${period()}`;
    a.setAttribute("data-testid", `export-${a.dataset.format}`);
  }
}

function select(id) {
  selected = id;
  for (const e of vehicles.values()) { decorate(e); renderListItem(e); }
  renderDetails();
  updateExports();
  const e = vehicles.get(id);
  if (e && e.marker) map.panTo(e.marker.getLatLng(), { animate: false });
  loadHistory();
}

async function loadHistory() {
  const id = selected;
  const info = $("#history-info");
  info.textContent = "loading…";
  if (historyLayer) { historyLayer.remove(); historyLayer = null; }
  const slider = $("#history-slider");
  slider.disabled = true; points = [];
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
        .bindTooltip(`start ${fmtTime(points[0].time)}`).addTo(historyLayer);
      for (const s of trips.stops) {
        L.circleMarker([s.latitude, s.longitude], { radius: 7, color: "#6a1b9a", fillColor: "#ce93d8", fillOpacity: 0.9, className: "stop-marker" })
          .bindTooltip(`stop ${fmtTime(s.start)} – ${fmtTime(s.end)} (${Math.round(s.duration_s / 60)} min${s.ignition_off ? ", ignition off" : ""})`)
          .addTo(historyLayer);
      }
      map.fitBounds(line.getBounds(), { padding: [40, 40], maxZoom: 16, animate: false });
      slider.max = String(points.length - 1); slider.value = slider.max; slider.disabled = false;
      moveCursor();
    }
    info.textContent = `${hist.count} reports drawn, ${trips.trips.length} trips, ${trips.stops.length} stops`;
    info.dataset.points = String(hist.count);
  } catch (e) { info.textContent = e.message; }
}

function moveCursor() {
  const pt = points[Number($("#history-slider").value)];
  if (!pt || !historyLayer) return;
  if (!cursor || !historyLayer.hasLayer(cursor))
    cursor = L.circleMarker([pt.latitude, pt.longitude], { radius: 8, color: "#e65100", fillColor: "#ffcc80", fillOpacity: 1, className: "history-cursor" }).addTo(historyLayer);
  cursor.setLatLng([pt.latitude, pt.longitude]);
  $("#slider-info").textContent = `${fmtTime(pt.time)} · ${pt.speed_kmh ?? "?"} km/h · ignition ${pt.ignition === null ? "?" : pt.ignition ? "on" : "off"}`;
}

$("#history-slider").addEventListener("input", moveCursor);
$("#history-load").addEventListener("click", loadHistory);
$("#history-span").addEventListener("change", () => { updateExports(); loadHistory(); });

// Zones --------------------------------------------------------------------------------------
const zoneLayer = L.layerGroup().addTo(map);
let zones = [];
const form = $("#zone-form");
let preview = null, drawing = null;

function zoneStyle(kind) { return kind === "allowed" ? { color: "#2e7d32", fillOpacity: 0.12, weight: 2 } : { color: "#c62828", fillOpacity: 0.15, weight: 2, dashArray: "6 4" }; }

async function loadZones() {
  zones = await api("/api/v1/geofences");
  zoneLayer.clearLayers();
  const ul = $("#zone-list");
  ul.replaceChildren();
  for (const z of zones) {
    L.geoJSON(z.geometry, { style: { ...zoneStyle(z.kind), className: "zone-shape" } })
      .bindTooltip(`${esc(z.name)} (${z.kind})`).addTo(zoneLayer);
    ul.append(h("li", { "data-testid": "zone-item", "data-zone-id": z.id },
      h("i", { class: `dot zone-${z.kind}` }), h("b", {}, z.name), h("span", { class: "muted" }, ` ${z.kind}`), " ",
      h("button", { type: "button", class: "link", onclick: () => editZone(z) }, "edit"),
      h("button", { type: "button", class: "link danger", onclick: () => deleteZone(z) }, "delete")));
  }
  document.body.dataset.zones = String(zones.length);
}

function ringOf(geometry) { return geometry.type === "Polygon" ? geometry.coordinates[0] : geometry.coordinates[0][0]; }

function editZone(z) {
  form.id.value = z.id; form.name.value = z.name; form.kind.value = z.kind; form.dwell_s.value = z.dwell_s || "";
  form.coords.value = ringOf(z.geometry).slice(0, -1).map(([lon, lat]) => `${lat}, ${lon}`).join("\n");
  showPreview();
}

async function deleteZone(z) {
  if (!confirm(`Delete the zone "${z.name}"?`)) return;
  try { await api(`/api/v1/geofences/${z.id}`, { method: "DELETE" }); toast(`zone "${z.name}" deleted`); await loadZones(); }
  catch (e) { toast(e.message, "error"); }
}

function parseCoords(text) {
  const pts = text.split(/\n|;/).map((s) => s.trim()).filter(Boolean).map((s) => {
    const [lat, lon] = s.split(/[ ,]+/).map(Number);
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) throw new Error(`not a "lat, lon" pair: ${s}`);
    return [lon, lat];
  });
  if (pts.length < 3) throw new Error("a zone needs at least three corners");
  return [...pts, pts[0]];
}

function showPreview() {
  if (preview) { preview.remove(); preview = null; }
  try {
    const ring = parseCoords(form.coords.value);
    preview = L.polygon(ring.map(([lon, lat]) => [lat, lon]), { color: "#ef6c00", dashArray: "4 4", fillOpacity: 0.1, className: "zone-preview" }).addTo(map);
  } catch { /* incomplete */ }
}

function clearForm() { form.reset(); form.id.value = ""; $("#zone-error").textContent = ""; if (preview) { preview.remove(); preview = null; } stopDrawing(); }

function stopDrawing() { drawing = null; map.getContainer().classList.remove("drawing"); $("#zone-draw").classList.remove("active"); }

$("#zone-draw").addEventListener("click", () => {
  drawing = { first: null };
  map.getContainer().classList.add("drawing");
  $("#zone-draw").classList.add("active");
  toast("Click two opposite corners of the zone on the map");
});
map.on("click", (ev) => {
  if (!drawing) return;
  if (!drawing.first) { drawing.first = ev.latlng; return; }
  const a = drawing.first, b = ev.latlng;
  const s = Math.min(a.lat, b.lat), n = Math.max(a.lat, b.lat), w = Math.min(a.lng, b.lng), e = Math.max(a.lng, b.lng);
  const f = (x) => x.toFixed(6);
  form.coords.value = [[s, w], [s, e], [n, e], [n, w]].map(([lat, lon]) => `${f(lat)}, ${f(lon)}`).join("\n");
  stopDrawing();
  showPreview();
});
form.coords.addEventListener("input", showPreview);
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
    toast(`zone "${z.name}" saved`);
    clearForm();
    await loadZones();
  } catch (e) { $("#zone-error").textContent = e.message; }
});

// Alerts -------------------------------------------------------------------------------------
function alertItem(a) {
  return h("li", { "data-testid": "alert-item", "data-alert-id": a.id, class: a.acknowledged_at ? "acked" : "new" },
    h("div", {}, a.message), h("div", { class: "muted small" }, fmtTime(a.time)),
    a.acknowledged_at ? null : h("button", { type: "button", class: "link", onclick: async (e) => {
      try { await api(`/api/v1/geofence-alerts/${a.id}/acknowledge`, { method: "POST" }); e.target.closest("li").className = "acked"; e.target.remove(); }
      catch (err) { toast(err.message, "error"); } } }, "acknowledge"));
}

async function loadAlerts() {
  const alerts = await api("/api/v1/geofence-alerts?limit=50");
  $("#alert-list").replaceChildren(...alerts.map(alertItem));
  if (!alerts.length) $("#alert-list").append(h("li", { class: "muted empty" }, "no alerts"));
}

function onAlert(a) {
  const list = $("#alert-list");
  list.querySelector(".empty")?.remove();
  if (!list.querySelector(`[data-alert-id="${a.id}"]`)) list.prepend(alertItem(a));
  toast(a.message, "alert");
}

// Live ---------------------------------------------------------------------------------------
function setLive(text, kind) { const el = $("#live-state"); el.textContent = text; el.className = `pill ${kind || ""}`; }

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/live`);
  let refused = false;
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "ready") setLive("live", "ok");
    else if (m.type === "positions") onPositions(m.positions);
    else if (m.type === "alert") onAlert(m);
    else if (m.type === "geofence") toast(`${vehicles.get(m.device_id) ? label(vehicles.get(m.device_id).v) : m.device_id}: ${m.event} ${m.geofence_name}`);
    else if (m.type === "resync") loadVehicles();
    else if (m.type === "error") { refused = true; setLive(m.message, "bad"); }
  };
  ws.onclose = () => { if (!refused) { setLive("reconnecting…", "warn"); setTimeout(connect, 3000); } };
}

await Promise.all([loadVehicles(), loadZones(), loadAlerts()]);
connect();
setInterval(() => loadVehicles().catch(() => {}), Number(config.refreshMs || 30000)); // statuses age; the stream carries positions
window.avlMap = { map, vehicles, select };
document.body.dataset.ready = "1";
