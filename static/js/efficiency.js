// GPM charts (templates/fleet/_efficiency.html) on the machine and job pages: for each GPU,
// NVML's utilisation beside SM activity, tensor activity, DRAM bandwidth and SM occupancy, from
// /api/v1/machines/<name>/series. The span is the job's run when the page gives one, else the
// page's range (static/js/charts.js: readRange). Loaded with `defer`, after Plotly and charts.js.
"use strict";

(function () {
  const cfgEl = document.getElementById("gpm-config");
  const charts = Array.from(document.querySelectorAll(".chart[data-gpm-gpu]"));
  if (!cfgEl || !charts.length || !window.Charts || !window.Plotly) return;
  const cfg = JSON.parse(cfgEl.textContent);

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  function span() {
    if (cfg.since) return Object.assign({ since: cfg.since }, cfg.until ? { until: cfg.until } : {});
    return Charts.rangeParams(Charts.readRange());
  }

  function seriesUrl(metric, params) {
    const url = new URL(cfg.seriesUrl, window.location.href);
    url.searchParams.set("metric", metric);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url;
  }

  async function redraw() {
    const params = span();
    const answers = await Promise.all(cfg.metrics.map(([metric]) => getJSON(seriesUrl(metric, params))));
    const theme = Charts.theme();
    const first = answers[0];
    const start = Date.parse(first.data_since || first.since);
    const end = Date.parse(first.until);
    for (const el of charts) {
      const gpu = Number(el.dataset.gpmGpu);
      const data = [];
      answers.forEach((resp, i) => {
        const s = resp.series.find((x) => x.device === gpu);
        if (!s) return;
        const name = cfg.metrics[i][1];
        data.push({
          x: s.t.map(Charts.localTime), y: s.mean, type: "scatter", mode: "lines", name: name, connectgaps: false,
          // NVML's figure dotted and on top: the one the others are read against
          line: { color: theme.colors[i % theme.colors.length], width: i === 0 ? 2 : 1.6, dash: i === 0 ? "dot" : "solid" },
          hovertemplate: "%{y:.1f} %<extra>" + name + "</extra>",
        });
      });
      const layout = Charts.layout("Activity (%)", { uirevision: JSON.stringify(params) });
      Object.assign(layout.yaxis, { range: [0, 101], autorange: false });
      layout.xaxis.range = [Charts.localTime(start), Charts.localTime(end)];
      if (!data.some((t) => t.y.some((v) => v !== null))) layout.annotations = Charts.note("No readings in this range");
      await Plotly.react(el, data, layout, Charts.config);
    }
  }

  // On a machine page, timed redraws only while its range ends now and auto-refresh is on, like
  // its other charts; a new range or theme at once. A finished job's span never changes.
  let forced = true;
  async function refresh() {
    if (!forced && !cfg.since && !Charts.isLive(Charts.readRange())) return;
    forced = false;
    await redraw();
  }
  const poller = Charts.poll(refresh, cfg.until ? 24 * 3600 * 1000 : 10000, 60000);
  const now = () => { forced = true; poller.now(); };
  document.addEventListener("themechange", now);  // static/js/base.js
  document.addEventListener("rangechange", now);  // static/js/charts.js: rangePicker
})();
