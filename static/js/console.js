// Keeps the backend list's live columns current (polls the JSON twin of the page).
(() => {
  "use strict";
  const table = document.getElementById("backends");
  if (!table) return;
  const errorBox = document.getElementById("live-error");
  const pill = (text) => {
    const span = document.createElement("span");
    span.className = `pill pill-${text}`;
    span.textContent = text;
    return span;
  };
  const cell = (row, name) => row.querySelector(`[data-live="${name}"]`);

  async function refresh() {
    try {
      const response = await fetch(table.dataset.liveUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      errorBox.hidden = data.redis;
      for (const b of data.backends) {
        const row = table.querySelector(`tr[data-backend="${b.id}"]`);
        if (!row || !b.known) continue;
        cell(row, "in_flight").textContent = `${b.in_flight} / ${b.cap}`;
        cell(row, "ttft").textContent = b.ttft_ms === null ? "—" : `${b.ttft_ms} ms`;
        const circuit = cell(row, "circuit");
        circuit.replaceChildren(pill(b.circuit));
        if (b.circuit === "open" && b.probe_in > 0) circuit.append(` probe in ${b.probe_in} s`);
        cell(row, "health").textContent = b.health;
      }
    } catch (err) {
      errorBox.hidden = false;
    }
  }
  setInterval(refresh, 2000);
})();
