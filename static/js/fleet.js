// Fleet overview: re-fetch the server-rendered machine list (with the page's filters, sort and
// page number, which live in the URL) and swap it in; draw sparklines; the fleet over time
// (throughput by kind, utilisation mean and p95, cost, value and RoI per day) for the range in
// the URL (static/js/charts.js: rangePicker).
"use strict";

(function () {
  const root = document.getElementById("machines");
  if (!root) return;

  // A new state or order applies at once; the text filter waits for Enter or the button.
  const filters = document.getElementById("fleet-filters");
  if (filters) filters.querySelectorAll("select").forEach((el) => el.addEventListener("change", () => filters.submit()));

  function drawSparklines() {
    const colors = Charts.theme().colors;
    root.querySelectorAll("[data-sparkline]").forEach((el) => {
      const values = JSON.parse(el.dataset.sparkline);
      const lines = [];
      // A line needs two points; one minute of history is not a trend yet.
      const drawable = (vs) => vs.filter((v) => v !== null).length >= 2;
      if (drawable(values.cpu)) lines.push({ name: "CPU", values: values.cpu, color: colors[0] });
      if (drawable(values.gpu)) lines.push({ name: "GPU", values: values.gpu, color: colors[1] });
      const legend = el.nextElementSibling;
      if (lines.length) Charts.sparkline(el, lines);
      el.hidden = !lines.length;
      if (legend) legend.hidden = !lines.length;
    });
  }

  function money(value, currency) {
    return value === null || value === undefined ? "–" : value.toFixed(2) + " " + currency;
  }

  // The history reads every device's rollups over the range: a day of a large fleet takes seconds
  // (bench/README.md). Say so while a new range loads, and say when it failed rather than leave the
  // last range's charts as if they were this one's; a 10 s refresh of the same range stays quiet.
  let drawnKey = null;

  async function drawHistory(range) {
    const card = document.getElementById("fleet-history");
    if (!card) return;
    const status = document.getElementById("fleet-history-status");
    const key = Charts.rangeKey(range);
    const url = new URL(card.dataset.url, window.location.href);
    for (const [k, v] of Object.entries(Charts.rangeParams(range))) url.searchParams.set(k, v);
    if (key !== drawnKey) {
      card.setAttribute("aria-busy", "true");
      status.classList.remove("bad");
      status.textContent = "Loading " + (range.preset || "the range") + "…";
    }
    let h;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      h = await response.json();
    } catch (err) {
      card.removeAttribute("aria-busy");
      status.classList.add("bad");
      status.textContent = "Could not load the fleet's history (" + err.message + ")" +
        (drawnKey === key ? "; showing the last answer" : "") + ". The next refresh tries again.";
      throw err;
    }
    card.removeAttribute("aria-busy");
    status.classList.remove("bad");
    status.textContent = "";
    drawnKey = key;
    const theme = Charts.theme();

    const u = h.utilisation;
    document.getElementById("fleet-util-title").textContent = u.label + ", mean and p95 across " + (u.scope === "gpu" ? "GPUs" : "machines");
    const x = u.t.map(Charts.localTime);
    const util = Charts.layout(u.label + " (%)", { uirevision: key });
    util.xaxis.range = [Charts.localTime(Date.parse(u.since)), Charts.localTime(Date.parse(u.until))];
    Object.assign(util.yaxis, { range: [0, 101], autorange: false });
    if (!u.t.length) util.annotations = Charts.note("No utilisation in this range yet (rollups run every 30 s)");
    const utilEl = document.getElementById("chart-fleet-util");
    await Plotly.react(utilEl, [
      { x: x, y: u.mean, type: "scatter", mode: "lines", name: "mean", line: { color: theme.colors[0], width: 1.8 },
        hovertemplate: "%{y:.1f} %<extra>mean</extra>" },
      { x: x, y: u.p95, type: "scatter", mode: "lines", name: "p95", line: { color: theme.colors[2], width: 1.2, dash: "dot" },
        hovertemplate: "%{y:.1f} %<extra>p95</extra>" },
    ], util, Charts.config);
    picker.zoomable(utilEl);

    const m = h.money;
    const cur = m.currency || "";
    const days = m.days.map((d) => Charts.localTime(d.t));
    const layout = Charts.layout("Per day (" + (cur || "no currency") + ")", { uirevision: key, barmode: "group" });
    layout.xaxis.range = [Charts.localTime(Date.parse(m.since)), Charts.localTime(Date.parse(m.until))];
    layout.yaxis.fixedrange = true;
    layout.yaxis2 = Object.assign({}, layout.yaxis, {
      title: { text: "RoI (%)", font: { color: theme.muted, size: 11 } }, overlaying: "y", side: "right",
      showgrid: false, rangemode: "normal",
    });
    layout.margin = Object.assign({}, layout.margin, { r: 56 });
    const known = m.days.some((d) => d.cost !== null || d.value !== null);
    if (!known) layout.annotations = Charts.note("No cost profile or value rates set: nothing to sum per day");
    layout.yaxis2.visible = known;  // an empty RoI axis would show Plotly's made-up ticks (-1 to 4)
    const moneyEl = document.getElementById("chart-fleet-money");
    await Plotly.react(moneyEl, [
      { x: days, y: m.days.map((d) => d.cost), type: "bar", name: "cost", marker: { color: theme.colors[5] },
        hovertemplate: "%{y:.2f} " + cur + "<extra>cost</extra>" },
      { x: days, y: m.days.map((d) => d.value), type: "bar", name: "value", marker: { color: theme.colors[1] },
        hovertemplate: "%{y:.2f} " + cur + "<extra>value</extra>" },
      { x: days, y: m.days.map((d) => d.roi_percent), type: "scatter", mode: "lines+markers", name: "RoI", yaxis: "y2",
        line: { color: theme.text, width: 1.2 }, hovertemplate: "%{y:.0f} %<extra>RoI</extra>" },
    ], layout, Charts.config);
    picker.zoomable(moneyEl);
    const note = document.getElementById("fleet-money-note");
    const parts = [];
    if (m.unset.length) parts.push("No cost profile or value rates for " + m.unset.join(", ") + " (Admin → Cost profiles, Value rates).");
    if (m.left_out.length) parts.push("Not summed, counted in another currency than " + cur + ": " + m.left_out.join(", ") + ".");
    const total = m.days.reduce((acc, d) => [acc[0] + (d.cost || 0), acc[1] + (d.value || 0)], [0, 0]);
    if (known) parts.unshift("In these days: cost " + money(total[0], cur) + ", value " + money(total[1], cur) + ".");
    note.hidden = !parts.length;
    note.textContent = parts.join(" ");
  }

  async function drawRange() {
    const range = picker.get();
    await Promise.all([
      window.Throughput ? Throughput.fleet(range) : null,
      drawHistory(range),
    ]);
    document.querySelectorAll("#fleet-throughput .chart").forEach((el) => { if (el.on) picker.zoomable(el); });
  }

  async function refresh() {
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
    if (response.redirected || !response.ok) return;  // logged out, or a server error: keep what we show
    // The charted cards keep their drawings: the fresh copies only mark where they go.
    const kept = ["fleet-throughput", "fleet-history"].map((id) => document.getElementById(id));
    root.innerHTML = await response.text();
    kept.forEach((card) => {
      const fresh = card && document.getElementById(card.id);
      if (fresh) fresh.replaceWith(card);
    });
    drawSparklines();
    if (picker.live()) await drawRange();
    Charts.tickAgo(root);
  }

  const picker = Charts.rangePicker(() => drawRange().catch((err) => console.warn("fleet charts failed", err)));
  drawSparklines();
  drawRange().catch((err) => console.warn("fleet charts failed", err));
  Charts.tickAgo(root);
  setInterval(() => { if (!document.hidden) Charts.tickAgo(root); }, 1000);
  document.addEventListener("themechange", () => { drawSparklines(); drawRange().catch(() => {}); });
  // The first render came with the page: start polling after one period.
  setTimeout(() => Charts.poll(refresh, 10000, 60000), 10000);
})();
