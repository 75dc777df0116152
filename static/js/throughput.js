// Tokens per second on three pages: the machine page's stacked charts per kind (machine.js calls
// Throughput.machine(range) with its own refresh and range picker), the fleet page's totals (fleet.js calls
// Throughput.fleet()), and the job page's chart with its GPUs' utilisation, which polls by itself
// until the job has finished. Loaded after charts.js.
"use strict";

window.Throughput = (function () {
  const FINISHED = ["succeeded", "failed", "cancelled", "lost"];
  const PREFIXES = [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]];
  const LABELS = { train: "Training tokens", prompt: "Prompt tokens", generated: "Generated tokens" };

  // "1.23 k tokens/s": three significant digits and a k/M/G/T prefix, "—" when unknown; the same
  // words as the `si` template filter (dashboard/fleet/templatetags/fleet_format.py).
  function si(value, unit) {
    if (value === null || value === undefined) return "—";
    const rounded = Number(Number(value).toPrecision(3));
    let text;
    if (rounded === 0) text = "0";
    else if (Math.abs(rounded) < 0.001) text = "< 0.001";
    else {
      text = String(rounded);
      for (const [prefix, size] of PREFIXES) {
        if (Math.abs(rounded) >= size) { text = Number((rounded / size).toPrecision(3)) + " " + prefix; break; }
      }
    }
    return unit ? text + " " + unit : text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  function withParams(base, params) {
    const url = new URL(base, window.location.href);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url;
  }

  // A series lists only the steps that had tokens: a zero one step before and after each run
  // makes an idle stretch fall to the axis instead of being bridged by a straight line. Not at
  // the range's start (the run began earlier) nor in the last minute (its next windows are due).
  function withZeros(resp, s) {
    const t = s.t;
    const stepMs = resp.step_s * 1000;
    const x = [];
    const y = [];
    for (let i = 0; i < t.length; i++) {
      const gap = i === 0 ? t[0] - Date.parse(resp.since) : t[i] - t[i - 1];
      if (gap > stepMs) {
        if (i > 0 && gap > 2 * stepMs) { x.push(t[i - 1] + stepMs); y.push(0); }
        x.push(t[i] - stepMs); y.push(0);
      }
      x.push(t[i]); y.push(s.mean[i]);
    }
    const last = t[t.length - 1];
    const due = Math.min(Date.parse(resp.until), Date.now()) - Math.max(2 * stepMs, 60000);
    if (t.length && last < due) { x.push(last + stepMs); y.push(0); }
    return { x: x.map(Charts.localTime), y: y };
  }

  function noData(text) {
    return [{ text: text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
              font: { color: Charts.theme().muted } }];
  }

  // One stacked area per series (a job on a machine, a machine in the fleet); colorOf(series, i).
  function stackedFigure(resp, colorOf, uirevision) {
    const data = resp.series.map((s, i) => {
      const points = withZeros(resp, s);
      const color = colorOf(s, i);
      return { x: points.x, y: points.y, type: "scatter", mode: "lines", name: s.name, stackgroup: "tokens",
               line: { color: color, width: 1 }, fillcolor: Charts.withAlpha(color, 0.45),
               hovertemplate: "%{y:.3~s} tokens/s<extra>" + s.name + "</extra>" };
    });
    const layout = Charts.layout("Throughput (tokens/s)", { uirevision: uirevision });
    layout.yaxis.tickformat = "~s";
    layout.xaxis.range = [Charts.localTime(Date.parse(resp.since)), Charts.localTime(Date.parse(resp.until))];
    layout.showlegend = data.length > 0;  // even one: it names the job or machine
    if (!data.length) layout.annotations = noData("No tokens in this range");
    return { data, layout };
  }

  // Fill a summary's [data-field] cells; hide what has no tokens. Returns whether it had any.
  function fillSummary(el, summary) {
    el.querySelectorAll("[data-field]").forEach((cell) => {
      cell.textContent = si(summary[cell.dataset.field], cell.dataset.unit);
    });
    return summary.total_tokens > 0;
  }

  // ---- machine page: one stacked chart per kind with tokens in the range ---------------------

  // range: as Charts.readRange() gives it ({preset} or {from, to}).
  async function machine(range) {
    const card = document.getElementById("machine-throughput");
    if (!card) return;
    const params = Charts.rangeParams(range);
    const colors = Charts.theme().colors;
    const jobColor = (s) => (s.job === null ? Charts.theme().muted : colors[s.job % colors.length]);
    const blocks = Array.from(card.querySelectorAll(".throughput-kind"));
    const [summary, ...answers] = await Promise.all([
      getJSON(withParams(card.dataset.summaryUrl, params)),
      ...blocks.map((b) => getJSON(withParams(card.dataset.seriesUrl, Object.assign({ metric: "tokens." + b.dataset.kind }, params)))),
    ]);
    let any = false;
    await Promise.all(blocks.map((block, i) => {
      const resp = answers[i];
      const shown = fillSummary(block, summary.throughput[block.dataset.kind]) || resp.series.length > 0;
      block.hidden = !shown;
      any = any || shown;
      if (!shown) return null;
      const f = stackedFigure(resp, jobColor, Charts.rangeKey(range));
      return Plotly.react(block.querySelector(".chart"), f.data, f.layout, Charts.config);
    }));
    card.querySelector(".throughput-empty").hidden = any;
  }

  // ---- fleet page: generated and training tokens/s over the page's range, stacked by machine ----

  async function fleet(range) {
    const card = document.getElementById("fleet-throughput");
    if (!card) return;
    range = range || { preset: "1h" };
    const blocks = Array.from(card.querySelectorAll(".throughput-kind"));
    const answers = await Promise.all(blocks.map((b) =>
      getJSON(withParams(card.dataset.seriesUrl, Object.assign({ metric: "tokens." + b.dataset.kind }, Charts.rangeParams(range))))));
    // The same machine keeps its colour in both charts; the machines summed together (machine
    // null: those past the busiest ten) are drawn in the muted colour, last.
    const names = Array.from(new Set(answers.flatMap((a) => a.series.map((s) => s.machine)))).filter((n) => n !== null).sort();
    const colors = Charts.theme().colors;
    const machineColor = (s) => (s.machine === null ? Charts.theme().muted : colors[names.indexOf(s.machine) % colors.length]);
    let any = false;
    await Promise.all(blocks.map((block, i) => {
      block.hidden = !answers[i].series.length;
      if (block.hidden) return null;
      any = true;
      const f = stackedFigure(answers[i], machineColor, Charts.rangeKey(range));
      return Plotly.react(block.querySelector(".chart"), f.data, f.layout, Charts.config);
    }));
    card.querySelector(".throughput-empty").hidden = any;
  }

  // ---- job page: tokens/s lines, the job's GPU utilisation on a second axis ------------------

  // Several GPUs' series -> one mean line (they share the series' time steps).
  function meanUtil(series) {
    const sums = new Map();
    for (const s of series) {
      s.t.forEach((t, i) => {
        if (s.mean[i] === null) return;
        const acc = sums.get(t) || [0, 0];
        sums.set(t, [acc[0] + s.mean[i], acc[1] + 1]);
      });
    }
    const t = Array.from(sums.keys()).sort((a, b) => a - b);
    return { t: t, mean: t.map((k) => sums.get(k)[0] / sums.get(k)[1]) };
  }

  function jobFigure(tokenAnswers, util, gpuCount) {
    const theme = Charts.theme();
    const data = [];
    tokenAnswers.forEach((resp, i) => {
      const kind = resp.metric.replace("tokens.", "");
      for (const s of resp.series) {
        const points = withZeros(resp, s);
        data.push({ x: points.x, y: points.y, type: "scatter", mode: "lines", name: LABELS[kind],
                    line: { color: theme.colors[i % theme.colors.length], width: 1.8 },
                    hovertemplate: "%{y:.3~s} tokens/s<extra>" + LABELS[kind] + "</extra>" });
      }
    });
    const span = tokenAnswers[0];
    const layout = Charts.layout("Throughput (tokens/s)", { uirevision: "job" });
    layout.yaxis.tickformat = "~s";
    layout.xaxis.range = [Charts.localTime(Date.parse(span.since)), Charts.localTime(Date.parse(span.until))];
    if (util && util.series.length) {
      const u = meanUtil(util.series);
      const name = gpuCount > 1 ? "GPU utilisation (mean of " + gpuCount + ")" : "GPU utilisation";
      data.push({ x: u.t.map(Charts.localTime), y: u.mean, yaxis: "y2", type: "scatter", mode: "lines", name: name,
                  line: { color: theme.muted, width: 1.2, dash: "dot" }, hovertemplate: "%{y:.0f} %<extra>" + name + "</extra>" });
      layout.yaxis2 = Object.assign({}, layout.yaxis, {
        title: { text: "GPU utilisation (%)", font: { color: theme.muted, size: 11 } },
        overlaying: "y", side: "right", range: [0, 101], autorange: false, showgrid: false, tickformat: "",
        tickmode: "array", tickvals: [0, 25, 50, 75, 100],
      });
      layout.margin = Object.assign({}, layout.margin, { r: 56 });
    }
    if (!data.length) layout.annotations = noData("No tokens yet");
    return { data, layout };
  }

  function jobPage() {
    const card = document.getElementById("job-throughput");
    if (!card) return;
    const kinds = card.dataset.kinds.split(" ");
    const gpuCount = Number(card.dataset.gpus || 0);
    const chart = document.getElementById("chart-job-throughput");

    async function draw() {
      const job = await getJSON(card.dataset.jobUrl);
      const [util, ...tokenAnswers] = await Promise.all([
        gpuCount ? getJSON(withParams(card.dataset.seriesUrl, { metric: "gpu.util_percent" })) : null,
        ...kinds.map((k) => getJSON(withParams(card.dataset.seriesUrl, { metric: "tokens." + k }))),
      ]);
      let any = false;
      card.querySelectorAll("tr[data-kind]").forEach((row) => {
        row.hidden = !fillSummary(row, job.throughput[row.dataset.kind]);
        any = any || !row.hidden;
      });
      card.querySelector(".throughput-body").hidden = !any;
      card.querySelector(".throughput-empty").hidden = any;
      card.querySelector(".not-started").hidden = Boolean(job.started_at);
      if (any) {
        const f = jobFigure(tokenAnswers, util, gpuCount);
        await Plotly.react(chart, f.data, f.layout, Charts.config);
      }
      return job.status;
    }

    let timer = null;
    let drawn = null;  // the job's status at the last drawing
    async function tick() {
      clearTimeout(timer);
      try { drawn = await draw(); } catch (err) { console.warn("throughput refresh failed", err); }
      // A finished job's tokens are all in: one last drawing is enough.
      if (!FINISHED.includes(drawn)) timer = setTimeout(tick, document.hidden ? 60000 : 10000);
    }
    // job.js swaps in a fresh status card when the status changes: redraw then, not 10 s later.
    const state = document.getElementById("job-state");
    if (state) {
      new MutationObserver(() => {
        const now = document.getElementById("job-state");
        if (now && drawn !== null && now.dataset.status !== drawn && !FINISHED.includes(drawn)) tick();
      }).observe(state.parentNode, { childList: true });
    }
    document.addEventListener("themechange", () => draw().catch(() => {}));  // static/js/base.js
    tick();
  }

  jobPage();
  return { si, machine, fleet };
})();
