// Machine page: one Plotly chart per metric (or pair of metrics), fed by
// /api/v1/machines/<name>/series for the range in the URL (static/js/charts.js: rangePicker);
// job start and end marks on every chart, ECC/XID marks on the GPU health charts, throttled
// windows on the SM clock chart; the live state, processes and per-core bars re-fetched as a
// server-rendered partial. The throughput, jobs and RoI panels load on their own (base.js).
"use strict";

(function () {
  const configEl = document.getElementById("chart-config");
  if (!configEl) return;
  const cfg = JSON.parse(configEl.textContent);
  const charts = Array.from(document.querySelectorAll(".chart[data-metric]"));
  const noteEl = document.getElementById("range-note");
  const picker = Charts.rangePicker(() => poller.now());

  // NVML clock-event reasons (nvmlClocksEventReasons): bit -> words. "GPU idle" is normal and not marked.
  const THROTTLE = [
    [0x2, "application clocks setting"], [0x4, "software power cap"], [0x8, "hardware slowdown"],
    [0x10, "sync boost"], [0x20, "software thermal slowdown"], [0x40, "hardware thermal slowdown"],
    [0x80, "hardware power brake"], [0x100, "display clock setting"],
  ];

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  function seriesUrl(metric, range) {
    const url = new URL(cfg.seriesUrl, window.location.href);
    url.searchParams.set("metric", metric);
    for (const [k, v] of Object.entries(Charts.rangeParams(range))) url.searchParams.set(k, v);
    return url;
  }

  function maxOf(series, size) {
    let max = size || 0;
    for (const s of series) for (const v of (s.max || s.mean)) if (v !== null && v > max) max = v;
    return max;
  }

  // Vertical marks with a label at the top: [{t (ms), text, hover, color}].
  function marks(list, layout) {
    layout.shapes = (layout.shapes || []).concat(list.map((m) => ({
      type: "line", xref: "x", yref: "paper", x0: Charts.localTime(m.t), x1: Charts.localTime(m.t), y0: 0, y1: 1,
      line: { color: m.color, width: 1, dash: m.dash || "dot" },
    })));
    layout.annotations = (layout.annotations || []).concat(list.map((m) => ({
      x: Charts.localTime(m.t), xref: "x", y: 1, yref: "paper", yanchor: "bottom", text: m.text, hovertext: m.hover,
      showarrow: false, font: { size: 10, color: m.color },
    })));
  }

  function jobMarks(jobs, start, end) {
    const theme = Charts.theme();
    const out = [];
    for (const job of jobs) {
      for (const [field, text, color] of [["started_at", "▶", theme.colors[1]], ["finished_at", "■", theme.muted]]) {
        const t = job[field] ? Date.parse(job[field]) : null;
        if (t === null || t < start || t > end) continue;
        const what = field === "started_at" ? "started" : job.status;
        out.push({ t: t, text: text + " #" + job.id, hover: "#" + job.id + " " + job.name + " " + what, color: color });
      }
    }
    return out;
  }

  // Where a cumulative error count went up: one mark per rise, per GPU.
  function rises(resp, label, color) {
    const out = [];
    for (const s of resp.series) {
      let before = null;
      s.t.forEach((t, i) => {
        const v = s.mean[i];
        if (v === null) return;
        if (before !== null && v > before) {
          out.push({ t: t, text: label, hover: label + " +" + (v - before) + " on GPU " + s.device, color: color, dash: "solid" });
        }
        before = v;
      });
    }
    return out;
  }

  function throttled(resp, clocks) {
    const theme = Charts.theme();
    const traces = [];
    for (const s of resp.series) {
      const line = clocks.series.find((c) => c.device === s.device);
      if (!line) continue;
      const at = new Map(line.t.map((t, i) => [t, line.mean[i]]));
      const x = [], y = [], text = [];
      s.t.forEach((t, i) => {
        const bits = s.mean[i];
        const why = THROTTLE.filter(([bit]) => bits & bit).map(([, words]) => words);
        if (!why.length || !at.has(t)) return;
        x.push(Charts.localTime(t)); y.push(at.get(t)); text.push("GPU " + s.device + ": " + why.join(", "));
      });
      if (x.length) {
        traces.push({ x: x, y: y, text: text, type: "scatter", mode: "markers", name: "Throttled",
                      legendgroup: "throttled", showlegend: !traces.length,
                      marker: { symbol: "triangle-down", size: 8, color: theme.colors[7] },
                      hovertemplate: "%{text}<extra>throttled</extra>" });
      }
    }
    return traces;
  }

  function figure(el, answers, extra) {
    const theme = Charts.theme();
    const first = answers[0];
    const isRam = el.dataset.metric === "system.mem_used_bytes";
    const all = answers.flatMap((a) => a.series);
    let size = 1;
    let unit = first.unit;
    if (first.unit === "B" || first.unit === "B/s") {
      const u = Charts.byteUnit(maxOf(all, isRam ? cfg.memTotalBytes : 0));
      size = u.size;
      unit = u.unit + (first.unit === "B/s" ? "/s" : "");
    }
    // Min-max bands help with one or two series; with eight GPUs they only hide each other.
    const band = all.length <= 2;
    const data = [];
    answers.forEach((resp, r) => {
      // "GPU 0 · H100 80GB HBM3" -> "GPU 0" when every device is the same model.
      const models = new Set(resp.series.map((s) => s.name.split(" · ").slice(1).join(" · ")));
      const short = resp.series.length > 1 && models.size === 1;
      resp.series.forEach((s, i) => {
        const name = answers.length > 1 ? resp.label : (short ? s.name.split(" · ")[0] : s.name);
        const color = theme.colors[(s.device === null ? i + r : s.device) % theme.colors.length];
        data.push(...Charts.bandTraces(
          name, s.t.map(Charts.localTime),
          band && s.min ? Charts.scale(s.min, size) : null,
          Charts.scale(s.mean, size),
          band && s.max ? Charts.scale(s.max, size) : null,
          color, unit,
        ));
      });
    });
    const start = Date.parse(first.data_since || first.since);
    const end = Date.parse(first.until);
    if (isRam && cfg.memTotalBytes) {
      data.push({ x: [Charts.localTime(start), Charts.localTime(end)], y: [cfg.memTotalBytes / size, cfg.memTotalBytes / size],
                  type: "scatter", mode: "lines", name: "Total",
                  line: { color: theme.muted, width: 1, dash: "dot" }, hoverinfo: "skip" });
    }
    if (extra.throttle) data.push(...throttled(extra.throttle, answers[0]));
    // The range the data was fetched for: the picker may have moved on since.
    const layout = Charts.layout(el.dataset.axis + (unit ? " (" + unit + ")" : ""), { uirevision: Charts.rangeKey(extra.range) });
    layout.showlegend = data.filter((t) => t.showlegend !== false).length > 1;
    layout.xaxis.range = [Charts.localTime(start), Charts.localTime(end)];
    layout.margin = Object.assign({}, layout.margin, { t: 18 });  // room for the marks' labels
    if (first.unit === "%") Object.assign(layout.yaxis, { range: [0, 101], autorange: false });
    if (!all.length) layout.annotations = Charts.note("No data in this range");
    marks(extra.marks, layout);
    return { data, layout };
  }

  async function draw(el, range, jobs, health) {
    const metrics = el.dataset.metric.split(" ");
    const [answers, throttle] = await Promise.all([
      Promise.all(metrics.map((m) => getJSON(seriesUrl(m, range)))),
      el.dataset.throttle ? getJSON(seriesUrl("gpu.throttle_reasons", range)) : null,
    ]);
    const start = Date.parse(answers[0].data_since || answers[0].since);
    const end = Date.parse(answers[0].until);
    const list = jobMarks(jobs, start, end).concat(el.dataset.health ? health : []);
    const f = figure(el, answers, { marks: list, throttle: throttle, range: range });
    await Plotly.react(el, f.data, f.layout, Charts.config);
    picker.zoomable(el);
    return answers[0].note;
  }

  async function healthMarks(range) {
    if (!document.querySelector(".chart[data-health]")) return [];
    const theme = Charts.theme();
    const [ecc, xid] = await Promise.all([getJSON(seriesUrl("gpu.ecc_errors", range)), getJSON(seriesUrl("gpu.xid_errors", range))]);
    return rises(ecc, "ECC", theme.colors[5]).concat(rises(xid, "XID", theme.colors[7]));
  }

  async function jobsHere() {
    const url = new URL(cfg.jobsUrl, window.location.href);
    url.searchParams.set("machine", cfg.machine);
    url.searchParams.set("limit", "200");
    return (await getJSON(url)).jobs;
  }

  async function refreshLive() {
    const response = await fetch(cfg.liveUrl, { credentials: "same-origin" });
    if (response.redirected || !response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["machine-state", "machine-processes", "machine-cores"]) {
      const fresh = doc.getElementById(id);
      const current = document.getElementById(id);
      if (fresh && current) current.replaceWith(fresh);
    }
    Charts.tickAgo();
  }

  async function redraw() {
    const range = picker.get();
    // Marks are extras: a chart is still worth drawing without them.
    const [jobs, health] = await Promise.all([
      jobsHere().catch((err) => { console.warn("job marks failed", err); return []; }),
      healthMarks(range).catch((err) => { console.warn("ECC/XID marks failed", err); return []; }),
    ]);
    const notes = await Promise.all(charts.map((el) => draw(el, range, jobs, health)));
    const note = notes.find(Boolean);
    if (noteEl) {
      noteEl.hidden = !note;
      noteEl.textContent = note ? note + "." : "";
    }
    await drawThroughput(range);
  }

  // The throughput card comes as a panel of its own (static/js/base.js): drawn by redraw() when
  // it is there, and when it arrives. Once per refresh: a panel that arrives while redraw() waits
  // for the other charts is drawn by its panelload event, and redraw() then reuses that draw
  // instead of asking for the range's summary again (0.6-0.8 s of server time for 7 days).
  let cycle = 0;
  let throughputDraw = { cycle: -1, promise: null };
  function drawThroughput(range) {
    if (!window.Throughput || !document.getElementById("machine-throughput")) return Promise.resolve();
    if (throughputDraw.cycle !== cycle) {
      const promise = Throughput.machine(range).then(() => {
        document.querySelectorAll("#machine-throughput .chart").forEach((el) => { if (el.on) picker.zoomable(el); });
      });
      throughputDraw = { cycle: cycle, promise: promise };
    }
    return throughputDraw.promise;
  }

  let forced = true;
  async function refresh() {
    if (!forced && !picker.live()) return;  // a past range or auto-refresh off: nothing new to draw
    forced = false;
    cycle += 1;
    await Promise.all([redraw(), refreshLive()]);
  }

  Charts.tickAgo();
  setInterval(() => { if (!document.hidden) Charts.tickAgo(); }, 1000);
  const poller = Charts.poll(refresh, 10000, 60000);
  const now = poller.now;
  poller.now = () => { forced = true; return now(); };
  document.addEventListener("themechange", () => poller.now());  // static/js/base.js
  document.addEventListener("panelload", (event) => {
    if (event.detail.panel !== "throughput") return;
    drawThroughput(picker.get()).catch((err) => console.warn("throughput failed", err));
  });
})();
