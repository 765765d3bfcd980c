/* yujing live map dashboard: vanilla JS (ES2020), no framework, no requests to other origins.
 *
 * Data: GET /api/events, /api/alerts, /api/network, /api/triggers, /health, /api/replay*,
 * /api/events/{id}/mmi.geojson, and the live stream GET /api/stream (SSE: update, alert, trigger).
 * Only the replay control (/api/replay*) needs a key, an operator's: it is taken from the
 * URL (#key=...) or the key field, kept in sessionStorage (this tab only) and sent only there.
 * Libraries (vendor/): Leaflet (map), topojson-client (basemap), h3-js (hexagon outlines).
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HAS_H3 = typeof window.h3 === "object" && typeof window.h3.cellToBoundary === "function";

  const NETWORK_POLL_MS = 10_000;
  const HEALTH_POLL_MS = 5_000;
  const TRIGGER_KEEP_MS = 10 * 60_000; // as /api/triggers: the last 10 minutes
  let TIMELINE_SPAN_MS = 5 * 60_000; // the timeline's window; the page's select changes it
  const MMI_DEBOUNCE_MS = 500;
  const TIER_DEBOUNCE_MS = 400;

  const state = {
    events: new Map(), // event_id -> newest update json
    alerts: new Map(), // alert_id -> newest alert message json
    selected: null, // event_id shown (MMI + tiers)
    userSelected: false, // the user clicked an event: stop following the newest
    centredOn: null, // event_id the map was last moved to
    fresh: new Set(), // event_ids whose row should flash once
    timeline: [], // {t: ms, kind: "trigger"|"update"|"alert", mag?, msgType?}
    onTimeline: new Set(), // "event_id#version" / "alert_id#version" already on the timeline
    triggers: new Map(), // res-5 cell -> {layer, last: ms, count, pga}
    stream: null,
    streamRetryMs: 1000,
  };

  // ------------------------------------------------------------------ utilities
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      return this.status ? `${this.status} ${this.code}: ${this.message}` : this.message;
    }
  }

  // ------------------------------------------------------------------ operator key
  const KEY_STORAGE = "yujing.operatorKey";
  function operatorKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }
  function setOperatorKey(k) {
    if (k) sessionStorage.setItem(KEY_STORAGE, k);
    else sessionStorage.removeItem(KEY_STORAGE);
  }
  // `yujing serve` prints /#key=...: a fragment never reaches a server or its logs; take it
  // and drop it from the address bar (and history) at once
  {
    const m = /(?:^#|&)key=([^&]+)/.exec(location.hash);
    if (m) {
      setOperatorKey(decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  /** fetch JSON from this origin; errors carry the API's {"error": {status, code, message}} shape.
   *  `withKey`: send the operator key (only the replay control's routes need it). */
  async function api(path, opts, withKey = false) {
    let r;
    const headers = { Accept: "application/json", ...((opts && opts.headers) || {}) };
    if (withKey && operatorKey()) headers.Authorization = `Bearer ${operatorKey()}`;
    try {
      r = await fetch(path, { ...opts, headers });
    } catch (e) {
      throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
    }
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      /* not JSON */
    }
    if (!r.ok) {
      const e = body && body.error;
      if (e) throw new ApiError(e.status, e.code, e.message);
      throw new ApiError(r.status, "http", `HTTP ${r.status}`);
    }
    return body;
  }

  /** run fn at most once per `ms`, `ms` after the first call of a burst (so a steady stream
   *  of updates still refreshes, and the last state is always fetched) */
  function coalesce(fn, ms) {
    let t = null;
    return () => {
      if (t !== null) return;
      t = setTimeout(() => {
        t = null;
        fn();
      }, ms);
    };
  }

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  const fmt = (x, d = 1) => (x == null || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
  const int = (x) => (x == null ? "–" : Number(x).toLocaleString("en-US"));
  function hhmmss(iso) {
    const t = ms(iso);
    return Number.isNaN(t) ? "–" : new Date(t).toISOString().slice(11, 19);
  }
  function utc(iso) {
    const t = ms(iso);
    return Number.isNaN(t) ? "–" : new Date(t).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  // ------------------------------------------------------------------ map
  const map = L.map("map", { minZoom: 2, maxZoom: 11, zoomSnap: 0.5, worldCopyJump: false })
    .setView([28, 100], 3);
  map.attributionControl.setPrefix("Leaflet");
  map.attributionControl.addAttribution("Natural Earth (world-atlas)");
  L.control.scale({ imperial: false }).addTo(map);

  const panes = { basemap: 200, mmi: 350, tiers: 380, network: 400, triggers: 420, events: 640 };
  for (const [name, z] of Object.entries(panes)) map.createPane(name).style.zIndex = String(z);
  map.getPane("basemap").style.pointerEvents = "none";

  const layers = {
    basemap: null,
    mmi: L.layerGroup().addTo(map),
    tiers: L.layerGroup().addTo(map),
    network: L.layerGroup().addTo(map),
    triggers: L.layerGroup().addTo(map),
    events: L.layerGroup().addTo(map),
  };
  L.control
    .layers(null, {
      "MMI forecast": layers.mmi,
      "alert tiers": layers.tiers,
      "devices online": layers.network,
      "trigger areas": layers.triggers,
      events: layers.events,
    }, { collapsed: true })
    .addTo(map);

  async function loadBasemap() {
    try {
      const topo = await api("vendor/world-atlas/countries-50m.json");
      const countries = topojson.feature(topo, topo.objects.countries);
      layers.basemap = L.geoJSON(countries, {
        pane: "basemap",
        interactive: false,
        style: { color: "#a9a59a", weight: 0.7, fillColor: "#f2efe6", fillOpacity: 1, className: "basemap-country" },
      }).addTo(map);
      document.body.dataset.basemap = "ready";
    } catch (e) {
      document.body.dataset.basemap = "failed";
      setStatusNote(`basemap: ${e}`);
    }
  }

  /** [lat, lng] ring of an H3 cell, or null without h3-js. */
  function hexRing(cell) {
    if (!HAS_H3) return null;
    try {
      return h3.cellToBoundary(cell);
    } catch (_) {
      return null;
    }
  }

  // ------------------------------------------------------------------ network (devices online per area)
  async function pollNetwork() {
    try {
      const net = await api("/api/network?res=5");
      layers.network.clearLayers();
      const max = Math.max(1, ...net.areas.map((a) => a.devices));
      for (const a of net.areas) {
        const op = 0.15 + 0.55 * (Math.log1p(a.devices) / Math.log1p(max));
        const style = { pane: "network", color: "#2f6fb3", weight: 0.5, opacity: 0.6, fillColor: "#2f6fb3", fillOpacity: op, className: "network-area" };
        const ring = hexRing(a.cell);
        const shape = ring ? L.polygon(ring, style) : L.circleMarker([a.latitude, a.longitude], { ...style, radius: 5 });
        shape.bindTooltip(`${int(a.devices)} devices online in this area`);
        layers.network.addLayer(shape);
      }
      $("map").dataset.networkAreas = String(net.areas.length);
    } catch (e) {
      setStatusNote(`network: ${e}`);
    }
  }

  // ------------------------------------------------------------------ triggers (res-5 areas, flash on new)
  function flash(layer) {
    const p = layer.getElement && layer.getElement();
    if (!p) return;
    p.classList.remove("trigger-flash");
    void p.getBBox; // no-op read; the reflow below restarts the animation
    void p.getBoundingClientRect();
    p.classList.add("trigger-flash");
  }

  function addTrigger(cell, lat, lon, iso, pga, count = 1, isNew = true) {
    const t = ms(iso) || Date.now();
    let tr = state.triggers.get(cell);
    if (!tr) {
      const style = { pane: "triggers", color: "#7a1fa2", weight: 1, fillColor: "#9b2cc9", fillOpacity: 0.35, className: "trigger-area" };
      const ring = hexRing(cell);
      const layer = ring ? L.polygon(ring, style) : L.circleMarker([lat, lon], { ...style, radius: 6 });
      tr = { layer, last: t, count: 0, pga: 0 };
      state.triggers.set(cell, tr);
      layers.triggers.addLayer(layer);
    }
    tr.count += count;
    tr.last = Math.max(tr.last, t);
    tr.pga = Math.max(tr.pga, pga || 0);
    tr.layer.bindTooltip(`${tr.count} trigger(s) in this area; last ${hhmmss(new Date(tr.last).toISOString())} UTC; max PGA ${fmt(tr.pga, 1)} gal`);
    if (isNew) flash(tr.layer);
  }

  async function loadTriggers() {
    try {
      const tr = await api("/api/triggers");
      for (const a of tr.areas) {
        if (!state.triggers.has(a.cell)) {
          addTrigger(a.cell, a.latitude, a.longitude, a.last, a.max_pga_gal, a.triggers, false);
          state.timeline.push({ t: ms(a.last), kind: "trigger" });
        }
      }
    } catch (e) {
      setStatusNote(`triggers: ${e}`);
    }
  }

  function pruneTriggers() {
    const old = Date.now() - TRIGGER_KEEP_MS;
    for (const [cell, tr] of state.triggers) {
      if (tr.last < old) {
        layers.triggers.removeLayer(tr.layer);
        state.triggers.delete(cell);
      }
    }
  }

  // ------------------------------------------------------------------ events
  function newestEventId() {
    let best = null;
    for (const e of state.events.values()) {
      // the newest live event; a retracted one only if nothing else is left
      const better = !best || (best.retracted && !e.retracted) ||
        (best.retracted === e.retracted && ms(e.origin_time) > ms(best.origin_time));
      if (better) best = e;
    }
    return best ? best.event_id : null;
  }

  function putEvent(u, isLive) {
    const old = state.events.get(u.event_id);
    if (old && old.version > u.version) return false;
    state.events.set(u.event_id, u);
    if (isLive) state.fresh.add(u.event_id);
    return true;
  }

  async function loadEvents() {
    try {
      const r = await api("/api/events?limit=100");
      for (const u of r.events) {
        putEvent(u, false);
        mark(`${u.event_id}#${u.version}`, { t: ms(u.issued_at), kind: "update", mag: u.magnitude });
      }
      scheduleRender();
    } catch (e) {
      setStatusNote(`events: ${e}`);
    }
  }

  function markerRadius(m) {
    return Math.max(4, Math.min(40, 3 * Math.pow(1.45, (m || 0) - 2)));
  }

  function eventPopup(u) {
    return `<strong>M${fmt(u.magnitude, 1)}</strong> ± ${fmt(u.magnitude_sigma, 1)}${u.retracted ? " <em>(retracted)</em>" : ""}
      <table>
        <tr><td>origin</td><td>${esc(utc(u.origin_time))}</td></tr>
        <tr><td>where</td><td>${fmt(u.latitude, 3)}°, ${fmt(u.longitude, 3)}° ± ${fmt(u.horizontal_error_km, 0)} km</td></tr>
        <tr><td>depth</td><td>${fmt(u.depth_km, 0)} km</td></tr>
        <tr><td>devices</td><td>${int(u.n_devices)}</td></tr>
        <tr><td>version</td><td>${u.version} (issued ${esc(hhmmss(u.issued_at))})</td></tr>
        <tr><td>id</td><td>${esc(u.event_id)}</td></tr>
      </table>`;
  }

  function renderEvents() {
    const body = $("events");
    const evs = [...state.events.values()].sort((a, b) => ms(b.origin_time) - ms(a.origin_time));
    if (!evs.length) return;
    const rows = evs.map((u) => {
      const tr = el(
        "tr",
        {
          tabindex: "0",
          dataset: { eventId: u.event_id, version: String(u.version), magnitude: String(u.magnitude) },
          "aria-label": `magnitude ${fmt(u.magnitude)} at ${utc(u.origin_time)}`,
          title: `${u.event_id}: ${fmt(u.latitude, 2)}°, ${fmt(u.longitude, 2)}°, depth ${fmt(u.depth_km, 0)} km`,
        },
        el("td", { class: "mag" }, fmt(u.magnitude, 1)),
        el("td", { title: utc(u.origin_time) }, hhmmss(u.origin_time)),
        el("td", {}, int(u.n_devices)),
        el("td", {}, u.version),
      );
      if (u.event_id === state.selected) tr.classList.add("selected");
      if (u.retracted) tr.classList.add("retracted");
      if (state.fresh.has(u.event_id)) tr.classList.add("fresh");
      return tr;
    });
    state.fresh.clear();
    body.replaceChildren(...rows);

    layers.events.clearLayers();
    for (const u of evs) {
      const sel = u.event_id === state.selected;
      const m = L.circleMarker([u.latitude, u.longitude], {
        pane: "events",
        radius: markerRadius(u.magnitude),
        color: u.retracted ? "#777" : sel ? "#000" : "#7a0010",
        weight: sel ? 2.5 : 1.5,
        fillColor: u.retracted ? "#bbb" : "#e0301e",
        fillOpacity: 0.55,
        className: "event-marker",
      });
      m.bindPopup(eventPopup(u));
      m.bindTooltip(`M${fmt(u.magnitude, 1)}`, { permanent: sel, direction: "right", className: "event-label", offset: [markerRadius(u.magnitude), 0] });
      m.on("click", () => select(u.event_id, true));
      layers.events.addLayer(m);
    }
  }

  function select(eventId, byUser) {
    if (byUser) state.userSelected = true;
    const changed = state.selected !== eventId;
    state.selected = eventId;
    if (changed) {
      layers.mmi.clearLayers();
      layers.tiers.clearLayers();
      loadMmi(eventId);
      drawTiers();
    }
    const u = state.events.get(eventId);
    if (u && state.centredOn !== eventId) {
      state.centredOn = eventId;
      map.setView([u.latitude, u.longitude], Math.max(map.getZoom(), 6.5), { animate: !!byUser });
    }
    scheduleRender();
  }

  function followNewest() {
    if (state.userSelected && state.events.has(state.selected)) return;
    const id = newestEventId();
    if (id && id !== state.selected) select(id, false);
  }

  document.getElementById("events").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-event-id]");
    if (tr) select(tr.dataset.eventId, true);
  });
  document.getElementById("events").addEventListener("keydown", (ev) => {
    const tr = ev.target.closest("tr[data-event-id]");
    if (tr && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      select(tr.dataset.eventId, true);
    }
  });

  // ------------------------------------------------------------------ MMI bands of the selected event
  let mmiSeq = 0;
  async function loadMmi(eventId) {
    if (!eventId) return;
    const seq = ++mmiSeq;
    try {
      const fc = await api(`/api/events/${encodeURIComponent(eventId)}/mmi.geojson?bin_width=0.5`);
      if (seq !== mmiSeq || eventId !== state.selected) return; // a newer request won
      layers.mmi.clearLayers();
      layers.mmi.addLayer(
        L.geoJSON(fc, {
          pane: "mmi",
          style: (f) => ({ color: f.properties.color, weight: 0, fillColor: f.properties.color, fillOpacity: 0.5, className: "mmi-band" }),
          onEachFeature: (f, l) => l.bindTooltip(`forecast MMI ${fmt(f.properties.mmi, 1)}–${fmt(f.properties.mmi_max, 1)} (${int(f.properties.cells)} cells)`, { sticky: true }),
        }),
      );
      $("map").dataset.mmiBands = String(fc.features.length);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) setStatusNote(`MMI: ${e}`);
    }
  }
  const loadMmiSoon = coalesce(() => loadMmi(state.selected), MMI_DEBOUNCE_MS);

  // ------------------------------------------------------------------ alerts
  function putAlert(a) {
    const old = state.alerts.get(a.alert_id);
    if (old && old.version > a.version) return false;
    state.alerts.set(a.alert_id, a);
    return true;
  }

  async function loadAlerts() {
    try {
      const r = await api("/api/alerts?limit=200");
      for (const a of r.alerts) {
        putAlert(a);
        mark(`${a.alert_id}#${a.version}`, { t: ms(a.issued_at), kind: "alert", msgType: a.msg_type });
      }
      scheduleRender();
      drawTiersSoon();
    } catch (e) {
      setStatusNote(`alerts: ${e}`);
    }
  }

  function tierSummary(a) {
    return (a.tiers || []).map((t) => `${t.name.replace("_", " ")} ${int(t.cells.length)}`).join(" · ") || "none";
  }

  function renderAlerts() {
    const al = [...state.alerts.values()].sort((a, b) => ms(b.issued_at) - ms(a.issued_at));
    if (!al.length) return;
    $("alerts").replaceChildren(
      ...al.map((a) =>
        el(
          "tr",
          { dataset: { alertId: a.alert_id, eventId: a.event_id, msgType: a.msg_type, version: String(a.version) }, title: `${a.alert_id}, issued ${utc(a.issued_at)}` },
          el("td", {}, el("span", { class: `badge b-${a.msg_type}` }, a.msg_type)),
          el("td", { class: "mag" }, fmt(a.magnitude, 1)),
          el("td", {}, tierSummary(a)),
          el("td", {}, a.version),
        ),
      ),
    );
  }

  const TIER_STYLE = {
    take_action: { color: "#c1121f", weight: 2.5, fill: true, fillColor: "#c1121f", fillOpacity: 0.08 },
    be_aware: { color: "#e88a00", weight: 2, dashArray: "6 4", fill: false },
  };

  /** Outline each tier of the selected event's newest alert (H3 cells; merged with h3-js). */
  function drawTiers() {
    layers.tiers.clearLayers();
    const a = [...state.alerts.values()].filter((x) => x.event_id === state.selected).sort((x, y) => y.version - x.version)[0];
    $("map").dataset.tiers = "0";
    if (!a || a.msg_type === "cancel") return;
    let drawn = 0;
    // be_aware first so take_action is drawn on top
    const tiers = [...(a.tiers || [])].sort((x, y) => x.min_mmi - y.min_mmi);
    for (const t of tiers) {
      const style = { pane: "tiers", interactive: true, className: `tier tier-${t.name}`, ...(TIER_STYLE[t.name] || TIER_STYLE.be_aware) };
      const label = `${t.name.replace("_", " ")}: forecast MMI ≥ ${fmt(t.min_mmi, 1)}`;
      let shape = null;
      if (HAS_H3 && t.cells.length) {
        try {
          const res = a.h3_resolution || Math.max(...t.cells.map((c) => h3.getResolution(c)));
          const cells = h3.uncompactCells(t.cells, res);
          const polys = h3.cellsToMultiPolygon(cells, false); // [[[lat, lng], ...], holes...][]
          shape = L.polygon(polys, style);
        } catch (e) {
          shape = null;
        }
        if (!shape) {
          const rings = t.cells.map(hexRing).filter(Boolean);
          if (rings.length) shape = L.polygon(rings.map((r) => [r]), style);
        }
      }
      if (!shape) {
        // without h3-js: the tier as a circle around the epicentre is not known; mark the epicentre
        shape = L.circleMarker([a.latitude, a.longitude], { ...style, radius: 12 + 8 * drawn });
      }
      shape.bindTooltip(label, { sticky: true });
      layers.tiers.addLayer(shape);
      drawn += 1;
    }
    $("map").dataset.tiers = String(drawn);
  }
  const drawTiersSoon = coalesce(drawTiers, TIER_DEBOUNCE_MS);

  // ------------------------------------------------------------------ rendering (coalesced)
  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      followNewest();
      renderEvents();
      renderAlerts();
    });
  }

  // ------------------------------------------------------------------ timeline (canvas)
  /** put a message on the timeline once, however often it is seen (stream and re-fetches) */
  function mark(key, entry) {
    if (state.onTimeline.has(key)) return;
    state.onTimeline.add(key);
    state.timeline.push(entry);
  }

  const LANES = [
    { kind: "trigger", label: "triggers", color: "#9b2cc9" },
    { kind: "update", label: "event updates", color: "#e0301e" },
    { kind: "alert", label: "alerts", color: "#c1121f" },
  ];
  function drawTimeline() {
    const c = $("timeline");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 96, right = w - 8, top = 4, laneH = (h - 20) / LANES.length;
    const now = Date.now(), t0 = now - TIMELINE_SPAN_MS;
    const x = (t) => left + ((t - t0) / TIMELINE_SPAN_MS) * (right - left);
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    // grid: one line per minute
    g.strokeStyle = "#e3e6ea";
    g.fillStyle = "#5b6470";
    const spanMin = TIMELINE_SPAN_MS / 60_000;
    const stepMin = spanMin <= 1 ? 0.25 : spanMin <= 5 ? 1 : 3;
    for (let m = 0; m <= spanMin + 1e-9; m += stepMin) {
      const xx = x(now - m * 60_000);
      g.beginPath();
      g.moveTo(xx, top);
      g.lineTo(xx, h - 16);
      g.stroke();
      g.textAlign = "center";
      g.fillText(m === 0 ? "now" : m < 1 ? `−${m * 60} s` : `−${m} min`, Math.min(Math.max(xx, left + 14), right - 12), h - 7);
    }
    LANES.forEach((lane, i) => {
      const y = top + laneH * (i + 0.5);
      g.textAlign = "left";
      g.fillStyle = "#1b1f24";
      g.fillText(lane.label, 4, y);
      g.fillStyle = lane.color;
      g.strokeStyle = lane.color;
      for (const ev of state.timeline) {
        if (ev.kind !== lane.kind || ev.t < t0 || ev.t > now + 5000) continue;
        const xx = x(Math.min(ev.t, now));
        if (lane.kind === "trigger") {
          g.globalAlpha = 0.6;
          g.fillRect(xx - 0.75, y - laneH * 0.35, 1.5, laneH * 0.7);
          g.globalAlpha = 1;
        } else if (lane.kind === "update") {
          g.beginPath();
          g.arc(xx, y, Math.max(2, Math.min(laneH * 0.45, (ev.mag || 3) - 2)), 0, 2 * Math.PI);
          g.globalAlpha = 0.5;
          g.fill();
          g.globalAlpha = 1;
        } else {
          g.fillStyle = ev.msgType === "cancel" ? "#6c757d" : ev.msgType === "update" ? "#e88a00" : lane.color;
          g.beginPath();
          g.moveTo(xx, y - 6);
          g.lineTo(xx + 5, y + 5);
          g.lineTo(xx - 5, y + 5);
          g.closePath();
          g.fill();
          g.fillStyle = lane.color;
        }
      }
    });
    // forget what scrolled out long ago
    if (state.timeline.length > 5000 || (state.timeline.length && state.timeline[0].t < now - 16 * 60_000)) {
      state.timeline = state.timeline.filter((e) => e.t >= now - 16 * 60_000).sort((a, b) => a.t - b.t).slice(-20_000);
    }
  }

  // ------------------------------------------------------------------ live stream
  function connectStream() {
    if (state.stream) state.stream.close();
    const src = new EventSource("/api/stream");
    state.stream = src;
    const st = $("stream-state");
    let hadError = false;
    src.onopen = () => {
      state.streamRetryMs = 1000;
      if (hadError) resync(); // the browser reconnected by itself: fetch what was missed
      st.className = "dot dot-on";
      st.textContent = "stream: live";
      document.body.dataset.stream = "open";
    };
    src.onerror = () => {
      hadError = true;
      st.className = "dot dot-err";
      st.textContent = "stream: reconnecting";
      document.body.dataset.stream = "error";
      if (src.readyState === EventSource.CLOSED) {
        // the browser gave up (e.g. an HTTP error): retry ourselves, backing off
        const wait = state.streamRetryMs;
        state.streamRetryMs = Math.min(30_000, wait * 2);
        setTimeout(() => {
          if (state.stream === src) {
            connectStream();
            resync();
          }
        }, wait);
      }
    };
    src.addEventListener("update", (m) => {
      const u = JSON.parse(m.data);
      mark(`${u.event_id}#${u.version}`, { t: ms(u.issued_at) || Date.now(), kind: "update", mag: u.magnitude });
      if (putEvent(u, true)) {
        scheduleRender();
        if (u.event_id === state.selected || !state.userSelected) loadMmiSoon();
      }
    });
    src.addEventListener("alert", (m) => {
      const a = JSON.parse(m.data);
      mark(`${a.alert_id}#${a.version}`, { t: ms(a.issued_at) || Date.now(), kind: "alert", msgType: a.msg_type });
      if (putAlert(a)) {
        scheduleRender();
        drawTiersSoon();
        loadMmiSoon();
      }
    });
    src.addEventListener("trigger", (m) => {
      const t = JSON.parse(m.data);
      state.timeline.push({ t: ms(t.time) || Date.now(), kind: "trigger" });
      addTrigger(t.cell, t.latitude, t.longitude, t.time, t.pga_gal, 1, true);
    });
  }

  /** after a reconnect: fetch what the stream may have missed */
  function resync() {
    loadEvents();
    loadAlerts();
    loadTriggers();
  }

  // ------------------------------------------------------------------ status line
  let statusNote = "";
  function setStatusNote(s) {
    statusNote = s;
    $("health").dataset.note = s;
  }
  async function pollHealth() {
    const h = $("health");
    try {
      const s = await api("/health");
      const p50 = s.alert_latency_p50_ms == null ? "–" : `${Math.round(s.alert_latency_p50_ms)} ms`;
      h.textContent =
        `${s.status} · devices online ${int(s.devices_online)} · messages ${int(s.received)} · rejected ${int(s.rejected)}` +
        ` · events ${int(s.events)} · alerts ${int(s.alerts)} · alert latency p50 ${p50}` +
        (s.store_error ? ` · store error: ${s.store_error}` : "") +
        (statusNote ? ` · ${statusNote}` : "");
      h.className = s.status === "ok" ? "" : "error";
      statusNote = "";
    } catch (e) {
      h.textContent = `health: ${e}`;
      h.className = "error";
    }
  }

  // ------------------------------------------------------------------ replay control
  const replay = { polling: null };

  /** the replay control needs an operator key: without one, show the key field instead */
  function needKey(why) {
    $("key-form").hidden = false;
    $("replay-form").hidden = true;
    showReplay(why, !!operatorKey());
    if (!operatorKey()) $("replay-state").dataset.state = "need-key";
  }

  async function loadSources() {
    const sel = $("replay-source");
    if (!operatorKey()) {
      needKey("the replay control needs an operator key: yujing serve wrote it beside its database (<db>.operator-key) or printed it");
      return false;
    }
    try {
      const s = await api("/api/replay/sources", {}, true);
      $("key-form").hidden = true;
      $("replay-form").hidden = false;
      const groups = [];
      if (s.scenario && s.scenario.length) {
        groups.push(el("optgroup", { label: "simulated scenarios" }, ...s.scenario.map((k) => el("option", { value: `scenario:${k}` }, k))));
      }
      if (s.openeew && s.openeew.length) {
        groups.push(el("optgroup", { label: "OpenEEW recordings" }, ...s.openeew.map((k) => el("option", { value: `openeew:${k}` }, k))));
      }
      sel.replaceChildren(...groups);
      if (sel.querySelector('option[value="scenario:luding2022"]')) sel.value = "scenario:luding2022";
      sel.dispatchEvent(new Event("change"));
      $("replay-button").disabled = false;
      return true;
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        setOperatorKey("");
        needKey(`key refused: ${e}`);
        return false;
      }
      sel.replaceChildren(el("option", { value: "" }, "unavailable"));
      $("replay-button").disabled = true;
      showReplay(`cannot replay: ${e}`, true);
      return false;
    }
  }

  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const k = $("operator-key").value.trim();
    if (!k) return;
    setOperatorKey(k);
    $("operator-key").value = "";
    if (await loadSources()) pollReplay();
  });

  function showReplay(text, isError = false) {
    const p = $("replay-state");
    p.textContent = text;
    p.classList.toggle("error", isError);
    p.dataset.state = isError ? "error" : "ok";
  }

  function describeReplay(s) {
    if (!s || (!s.running && !s.name)) return "idle";
    const sent = `${int(s.sent)}${s.messages ? ` / ${int(s.messages)}` : ""} messages`;
    const origin = s.origin_time ? `; origin ${hhmmss(s.origin_time)} UTC` : "";
    return `${s.running ? "running" : "finished"}: ${s.name || s.source} (${sent}${origin})`;
  }

  async function pollReplay() {
    try {
      const s = await api("/api/replay", {}, true);
      showReplay(describeReplay(s));
      $("replay-state").dataset.running = String(!!s.running);
      if (!s.running && replay.polling) {
        clearInterval(replay.polling);
        replay.polling = null;
      }
      return s;
    } catch (e) {
      showReplay(`replay state: ${e}`, true);
      return null;
    }
  }

  $("replay-source").addEventListener("change", () => {
    $("replay-phones").disabled = !$("replay-source").value.startsWith("scenario:");
  });

  $("replay-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [source, key] = $("replay-source").value.split(/:(.*)/s);
    if (!source) return;
    const req = source === "scenario"
      ? { source, scenario: key, phones: Number($("replay-phones").value) || 20000, seed: 0, lead_s: 2 }
      : { source, event: key };
    const btn = $("replay-button");
    btn.disabled = true;
    showReplay("starting…");
    try {
      const s = await api("/api/replay", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) }, true);
      showReplay(describeReplay(s));
      $("replay-state").dataset.running = "true";
      state.userSelected = false; // follow the quake about to appear
      if (!replay.polling) replay.polling = setInterval(pollReplay, 2000);
    } catch (e) {
      showReplay(`replay refused: ${e}`, true);
    } finally {
      btn.disabled = false;
    }
  });

  // ------------------------------------------------------------------ legend
  function drawMmiScale() {
    const colours = ["#a0e6ff", "#80ffff", "#7aff93", "#ffff00", "#ffc800", "#ff9100", "#ff0000", "#c80000"];
    const box = $("mmi-scale");
    box.replaceChildren(el("b", {}, "MMI"), ...colours.map((c, i) => {
      const s = el("span", {}, String(i + 3));
      s.style.background = c;
      return s;
    }));
  }

  // ------------------------------------------------------------------ start
  drawMmiScale();
  loadBasemap();
  loadSources().then((ok) => ok && pollReplay());
  pollHealth();
  pollNetwork();
  loadTriggers();
  loadEvents();
  loadAlerts();
  connectStream();
  setInterval(pollHealth, HEALTH_POLL_MS);
  setInterval(pollNetwork, NETWORK_POLL_MS);
  setInterval(pruneTriggers, 15_000);
  setInterval(drawTimeline, 1000);
  window.addEventListener("resize", drawTimeline);
  $("timeline-span").addEventListener("change", (ev) => {
    TIMELINE_SPAN_MS = Number(ev.target.value) * 60_000;
    drawTimeline();
  });
  drawTimeline();
  window.yujingDashboard = { state, map, layers }; // for debugging and tests
})();
