// Machine page: one Plotly chart per metric, fed by /api/v1/machines/<name>/series, plus the
// live state and process table re-fetched as a server-rendered partial.
"use strict";

(function () {
  const configEl = document.getElementById("chart-config");
  if (!configEl) return;
  const cfg = JSON.parse(configEl.textContent);
  const charts = Array.from(document.querySelectorAll(".chart[data-metric]"));
  const RANGES = ["1h", "24h", "7d"];
  let range = new URLSearchParams(window.location.search).get("range");
  if (!RANGES.includes(range)) range = "1h";

  function markRange() {
    document.querySelectorAll("[data-range]").forEach((b) => {
      b.setAttribute("aria-pressed", String(b.dataset.range === range));
    });
  }

  function maxOf(series, size) {
    let max = size || 0;
    for (const s of series) for (const v of (s.max || s.mean)) if (v !== null && v > max) max = v;
    return max;
  }

  function figure(el, resp) {
    const theme = Charts.theme();
    const isRam = el.dataset.metric === "system.mem_used_bytes";
    let size = 1;
    let unit = resp.unit;
    if (resp.unit === "B") {
      const u = Charts.byteUnit(maxOf(resp.series, isRam ? cfg.memTotalBytes : 0));
      size = u.size;
      unit = u.unit;
    }
    // Min-max bands help with one or two series; with eight GPUs they only hide each other.
    const band = resp.series.length <= 2;
    // "GPU 0 · H100 80GB HBM3" -> "GPU 0" when every device is the same model.
    const models = new Set(resp.series.map((s) => s.name.split(" · ").slice(1).join(" · ")));
    const short = resp.series.length > 1 && models.size === 1;
    const data = [];
    resp.series.forEach((s, i) => {
      const name = short ? s.name.split(" · ")[0] : s.name;
      const x = s.t.map(Charts.localTime);
      const color = theme.colors[(s.device === null ? i : s.device) % theme.colors.length];
      data.push(...Charts.bandTraces(
        name, x,
        band && s.min ? Charts.scale(s.min, size) : null,
        Charts.scale(s.mean, size),
        band && s.max ? Charts.scale(s.max, size) : null,
        color, unit,
      ));
    });
    const start = Charts.localTime(Date.parse(resp.since));
    const end = Charts.localTime(Date.parse(resp.until));
    if (isRam && cfg.memTotalBytes) {
      data.push({ x: [start, end], y: [cfg.memTotalBytes / size, cfg.memTotalBytes / size],
                  type: "scatter", mode: "lines", name: "Total",
                  line: { color: theme.muted, width: 1, dash: "dot" }, hoverinfo: "skip" });
    }
    const layout = Charts.layout(el.dataset.axis + " (" + unit + ")", { uirevision: range });
    layout.showlegend = data.filter((t) => t.showlegend !== false).length > 1;
    layout.xaxis.range = [start, end];
    if (resp.unit === "%") Object.assign(layout.yaxis, { range: [0, 101], autorange: false });
    if (!resp.series.length) {
      layout.annotations = [{ text: "No data in this range", showarrow: false, xref: "paper",
                              yref: "paper", x: 0.5, y: 0.5, font: { color: theme.muted } }];
    }
    return { data, layout };
  }

  async function draw(el) {
    const url = new URL(cfg.seriesUrl, window.location.href);
    url.searchParams.set("metric", el.dataset.metric);
    url.searchParams.set("since", range);
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(el.dataset.metric + ": HTTP " + response.status);
    const f = figure(el, await response.json());
    await Plotly.react(el, f.data, f.layout, Charts.config);
  }

  async function refreshLive() {
    const response = await fetch(cfg.liveUrl, { credentials: "same-origin" });
    if (response.redirected || !response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["machine-state", "machine-processes"]) {
      const fresh = doc.getElementById(id);
      const current = document.getElementById(id);
      if (fresh && current) current.replaceWith(fresh);
    }
    Charts.tickAgo();
  }

  async function refresh() {
    await Promise.all([...charts.map(draw), refreshLive(), window.Throughput && Throughput.machine(range)]);
  }

  document.querySelectorAll("[data-range]").forEach((button) => {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      markRange();
      const url = new URL(window.location.href);
      url.searchParams.set("range", range);
      window.history.replaceState(null, "", url);
      poller.now();
    });
  });
  // Redraw with the other palette when the system switches between light and dark.
  document.addEventListener("themechange", () => poller.now());  // static/js/base.js

  markRange();
  Charts.tickAgo();
  setInterval(() => { if (!document.hidden) Charts.tickAgo(); }, 1000);
  const poller = Charts.poll(refresh, 10000, 60000);
})();
