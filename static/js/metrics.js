// The live metrics page: 15 minutes of points from /ws/metrics/, one more each second,
// drawn as small SVG line charts by this file alone (no library, no network).
(() => {
  "use strict";
  const WINDOW = 900;
  const COLORS = ["#b5651d", "#2f7ed8", "#1f9d55", "#c0392b", "#8e44ad", "#7f8c8d", "#d4a017"];
  const OUTCOMES = ["miss", "hit", "coalesced", "failed", "cancelled", "rejected"];
  const points = []; // {t, requests, latency, ttft, queues, inflight}
  const stateBox = document.getElementById("live-state");
  const stateText = document.getElementById("live-text");
  let lastGauges = null;

  function setState(kind, text) {
    stateBox.dataset.state = kind;
    stateText.textContent = text;
  }

  let view = WINDOW; // seconds shown: 15 min, 5 min or 1 min (buttons above the charts)

  function series(name, pick) {
    return { name, values: points.slice(-view).map(pick) };
  }

  function draw(id, list) {
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
      `<text class="tick" x="${pad}" y="${height - 2}">−${view >= 60 ? view / 60 + " min" : view + " s"}</text>`,
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
    legend.replaceChildren(...list.map((s, index) => {
      const item = document.createElement("span");
      const last = s.values.length ? s.values[s.values.length - 1] : null;
      item.innerHTML = `<i style="background:${COLORS[index % COLORS.length]}"></i>`;
      item.append(`${s.name} ${last == null ? "—" : fmt(last)}`);
      return item;
    }));
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
  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);

  function redraw() {
    draw("chart-throughput", OUTCOMES.map((o) => series(o, (p) => p.requests[o] || 0)));
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
    draw("chart-errors", ["failed", "rejected"].map((o) => series(o, (p) => p.requests[o] || 0)));
    const last = points[points.length - 1];
    if (!last) return;
    const now = (name) => document.querySelector(`[data-now="${name}"]`);
    now("rate").textContent = fmt(sum(last.requests));
    now("latency").textContent = `${fmt(last.latency.p50)} / ${fmt(last.latency.p99)} s`;
    now("ttft").textContent = `${fmt(last.ttft.p50)} s`;
    if (lastGauges) {
      now("queued").textContent = String(sum(lastGauges.queues));
      const oldest = Math.max(0, ...Object.values(last.oldest || {}));
      now("oldest").textContent = oldest ? `oldest ${fmt(oldest)} s` : "";
      now("workers").textContent = String(lastGauges.workers);
      now("cache").textContent = lastGauges.cache_ratio == null ? "—" : `${Math.round(lastGauges.cache_ratio * 100)} %`;
    }
  }

  function add(point, gauges) {
    lastGauges = gauges;
    // Stored gauges (written by a worker each second) first; the live reading otherwise.
    points.push({ ...point, queues: point.queues || gauges.queues, inflight: point.inflight || gauges.inflight });
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
        add(frame.point, frame.gauges);
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
