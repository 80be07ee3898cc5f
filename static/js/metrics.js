// The live metrics page: 15 minutes of points from /ws/metrics/, one more each second,
// drawn as small SVG line charts by this file alone (no library, no network).
//
// Tiles and legends speak of the window shown (15, 5 or 1 min), as the charts do: counts
// are the window's totals; a level (latency, depth) is its latest value in the window,
// marked idle when it is not from the last few seconds.
(() => {
  "use strict";
  const WINDOW = 900;
  const IDLE_AFTER = 5; // seconds without an answer before a tile says it shows an older one
  const COLORS = ["#b5651d", "#2f7ed8", "#1f9d55", "#c0392b", "#8e44ad", "#7f8c8d", "#d4a017"];
  const OUTCOMES = ["miss", "hit", "coalesced", "failed", "cancelled", "rejected"];
  const SHOWN_AS = { rejected: "refused" };
  const points = []; // one a second, oldest first: {t, requests, latency, ttft, queues, …}
  const stateBox = document.getElementById("live-state");
  const stateText = document.getElementById("live-text");
  let lastGauges = null;

  function setState(kind, text) {
    stateBox.dataset.state = kind;
    stateText.textContent = text;
  }

  let view = WINDOW; // seconds shown: 15 min, 5 min or 1 min (buttons above the charts)
  const windowName = () => (view >= 60 ? `${view / 60} min` : `${view} s`);
  const shown = () => points.slice(-view);

  function series(name, pick) {
    return { name, values: shown().map(pick) };
  }

  const latestOf = (values) => {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
    return null;
  };
  const totalOf = (values) => values.reduce((a, v) => a + (v || 0), 0);

  // ``counts``: the series are counts per second, and the legend gives the window's
  // totals; otherwise each series' latest value in the window.
  function draw(id, list, counts = false) {
    const svg = document.getElementById(id);
    const legend = document.getElementById(id.replace("chart-", "legend-"));
    const width = svg.clientWidth || 400, height = svg.clientHeight || 160, pad = 28;
    let max = 0;
    for (const s of list) for (const v of s.values) if (v != null && v > max) max = v;
    max = max > 0 ? niceCeil(max) : 1;
    const n = Math.max(Math.min(points.length, view), 2);
    const x = (i) => pad + (i * (width - pad - 4)) / (n - 1);
    const y = (v) => height - 16 - (v * (height - 24)) / max;
    const parts = [`<line class="axis" x1="${pad}" y1="${y(0)}" x2="${width - 4}" y2="${y(0)}"/>`,
      `<line class="grid" x1="${pad}" y1="${y(max / 2)}" x2="${width - 4}" y2="${y(max / 2)}"/>`,
      `<text class="tick" x="${pad - 4}" y="${y(max) + 8}" text-anchor="end">${fmt(max)}</text>`,
      `<text class="tick" x="${pad - 4}" y="${y(max / 2) + 4}" text-anchor="end">${fmt(max / 2)}</text>`,
      `<text class="tick" x="${pad}" y="${height - 2}">−${windowName()}</text>`,
      `<text class="tick" x="${width - 4}" y="${height - 2}" text-anchor="end">now</text>`];
    list.forEach((s, index) => {
      let d = "";
      const color = COLORS[index % COLORS.length];
      s.values.forEach((v, i) => {
        if (v == null) return;
        d += (d && s.values[i - 1] != null ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
        // A point with no neighbour draws no line: show it as a dot.
        if (s.values[i - 1] == null && s.values[i + 1] == null) {
          parts.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="2" fill="${color}"/>`);
        }
      });
      parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"/>`);
    });
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = parts.join("");
    const items = list.map((s, index) => {
      const item = document.createElement("span");
      const figure = counts ? count(totalOf(s.values)) : fmt(latestOf(s.values));
      item.innerHTML = `<i style="background:${COLORS[index % COLORS.length]}"></i>`;
      item.append(`${s.name} ${figure}`);
      return item;
    });
    if (counts && list.length) {
      const note = document.createElement("span");
      note.className = "legend-note";
      note.textContent = `in ${windowName()}:`;
      items.unshift(note);
    }
    legend.replaceChildren(...items);
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function fmt(v) {
    if (v == null) return "—";
    if (v >= 100) return Math.round(v).toString();
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2).replace(/\.?0+$/, "") || "0";
  }
  const count = (v) => Math.round(v).toLocaleString("en");
  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
  const ago = (seconds) => (seconds < 120 ? `${seconds}\u00a0s ago` : `${Math.round(seconds / 60)}\u00a0min ago`);

  function tile(name, value, note = "", idle = false) {
    const box = document.querySelector(`[data-now="${name}"]`);
    box.textContent = value;
    box.classList.toggle("is-idle", idle);
    const noteBox = document.querySelector(`[data-now="${name}-note"]`);
    if (noteBox) noteBox.textContent = note;
  }

  // A percentile tile: the latest second with answers in the window, p50 large, p99 below.
  function levelTile(name, pick, now) {
    const recent = shown();
    for (let i = recent.length - 1; i >= 0; i--) {
      const p = pick(recent[i]);
      if (p.p50 == null) continue;
      const since = now.t - recent[i].t;
      const idle = since >= IDLE_AFTER;
      tile(name, `${fmt(p.p50)}\u00a0s`, `p99 ${fmt(p.p99)}\u00a0s` + (idle ? ` · idle, last ${ago(since)}` : ""), idle);
      return;
    }
    tile(name, "—", `no answers in ${windowName()}`);
  }

  function breakdown(recent) {
    const rows = [];
    for (const [kind, field] of [["Refused", "refused"], ["Client error", "client_errors"]]) {
      const totals = {};
      for (const p of recent) for (const [label, n] of Object.entries(p[field] || {})) totals[label] = (totals[label] || 0) + n;
      for (const [label, n] of Object.entries(totals).sort((a, b) => b[1] - a[1])) rows.push([kind, label, n]);
    }
    const body = document.querySelector("#breakdown tbody");
    document.querySelector('[data-now="window-name"]').textContent = `(last ${windowName()})`;
    if (!rows.length) {
      const row = document.createElement("tr");
      row.innerHTML = `<td colspan="3" class="muted"></td>`;
      row.firstChild.textContent = `None in the last ${windowName()}.`;
      body.replaceChildren(row);
      return;
    }
    body.replaceChildren(...rows.map(([kind, label, n]) => {
      const row = document.createElement("tr");
      row.dataset.kind = kind === "Refused" ? "refused" : "client";
      row.dataset.label = label;
      for (const text of [kind, label, count(n)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
  }

  function redraw() {
    draw("chart-throughput", OUTCOMES.map((o) => series(SHOWN_AS[o] || o, (p) => p.requests[o] || 0)), true);
    draw("chart-latency", ["p50", "p95", "p99"].map((q) => series(q, (p) => p.latency[q])));
    draw("chart-ttft", ["p50", "p95", "p99"].map((q) => series(q, (p) => p.ttft[q])));
    const queueNames = Object.keys((lastGauges || {}).queues || {});
    draw("chart-queues", queueNames.map((q) => series(q, (p) => (p.queues || {})[q] ?? null)));
    const backendNames = Object.keys((lastGauges || {}).inflight || {});
    draw("chart-inflight", backendNames.map((b) => series(b, (p) => (p.inflight || {})[b] ?? null)));
    draw("chart-backend-latency", backendNames.map((b) => series(b, (p) => (p.backend_latency || {})[b] ?? null)));
    draw("chart-cache", [series("answered without a backend call", (p) => {
      const r = p.requests, asked = (r.hit || 0) + (r.coalesced || 0) + (r.miss || 0);
      return asked ? (100 * ((r.hit || 0) + (r.coalesced || 0))) / asked : null;
    })]);
    draw("chart-errors", [
      series("failed", (p) => p.requests.failed || 0),
      series("refused", (p) => p.requests.rejected || 0),
      series("client errors", (p) => sum(p.client_errors)),
    ], true);
    const last = points[points.length - 1];
    if (!last) return;
    const recent = shown();
    const total = (pick) => recent.reduce((a, p) => a + pick(p), 0);
    tile("rate", fmt(sum(last.requests)), `${count(total((p) => sum(p.requests)))} in ${windowName()}`);
    levelTile("latency", (p) => p.latency, last);
    levelTile("ttft", (p) => p.ttft, last);
    const asked = total((p) => (p.requests.hit || 0) + (p.requests.coalesced || 0) + (p.requests.miss || 0));
    const saved = total((p) => (p.requests.hit || 0) + (p.requests.coalesced || 0));
    tile("cache", asked ? `${Math.round((100 * saved) / asked)}\u00a0%` : "—",
      asked ? `of ${count(asked)} in ${windowName()}` : `nothing asked in ${windowName()}`);
    const failed = total((p) => p.requests.failed || 0), refused = total((p) => p.requests.rejected || 0);
    tile("errors", `${count(failed)} · ${count(refused)}`,
      `${count(total((p) => sum(p.client_errors)))}\u00a0client errors · ${count(total((p) => p.requests.cancelled || 0))}\u00a0cancelled`);
    breakdown(recent);
    if (lastGauges) {
      tile("queued", String(sum(lastGauges.queues)));
      const oldest = Math.max(0, ...Object.values(last.oldest || {}));
      document.querySelector('[data-now="oldest"]').textContent = oldest ? `oldest ${fmt(oldest)} s` : "";
      tile("workers", String(lastGauges.workers));
    }
  }

  // A second read again (its counts may have grown since) replaces the point we have.
  function upsert(point, gauges) {
    let i = points.length;
    while (i > 0 && points[i - 1].t > point.t) i--;
    const old = i > 0 && points[i - 1].t === point.t ? points[i - 1] : null;
    // Stored gauges (written by a worker each second) first; the live reading otherwise.
    const merged = {
      ...point,
      queues: point.queues || (old && old.queues) || gauges.queues,
      inflight: point.inflight || (old && old.inflight) || gauges.inflight,
    };
    if (old) points[i - 1] = merged;
    else points.splice(i, 0, merged);
    while (points.length > WINDOW) points.shift();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/metrics/`);
    socket.onopen = () => setState("live", "Live");
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type === "history") {
        points.length = 0;
        lastGauges = frame.gauges;
        for (const p of frame.points) points.push({ ...p });
        const last = points[points.length - 1];
        if (last && !last.queues) Object.assign(last, { queues: frame.gauges.queues, inflight: frame.gauges.inflight });
      } else if (frame.type === "snapshot") {
        lastGauges = frame.gauges;
        for (const p of frame.points) upsert(p, frame.gauges);
        setState("live", "Live");
      } else if (frame.type === "unavailable") {
        setState("down", "Redis is not answering — retrying");
      }
      redraw();
    };
    socket.onclose = (event) => {
      if (event.code === 4403) { setState("down", "Staff only"); return; }
      setState("down", "Disconnected — reconnecting…");
      setTimeout(connect, 2000);
    };
  }

  for (const button of document.querySelectorAll("[data-window]")) {
    button.addEventListener("click", () => {
      view = Number(button.dataset.window);
      for (const other of document.querySelectorAll("[data-window]")) other.setAttribute("aria-pressed", String(other === button));
      redraw();
    });
  }
  window.addEventListener("resize", redraw);
  connect();
})();
