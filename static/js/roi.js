// RoI: cumulative value against cumulative cost with the break-even point marked, and the cost of
// each day stacked by kind, fed by /api/v1/machines/<name>/roi. Times in the browser's zone.
"use strict";

(function () {
  const script = document.currentScript;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

  function pad(n) { return String(n).padStart(2, "0"); }

  // <time datetime="ISO">… UTC</time> -> "YYYY-MM-DD HH:MM" in the browser's zone.
  function localize() {
    document.querySelectorAll(".economics time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(d.getTime())) return;
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes());
      el.title = zone;
    });
    document.querySelectorAll(".economics [data-zone]").forEach((el) => { el.textContent = "Times in " + zone + "."; });
  }

  // The machine page loads Plotly only when it has telemetry; load it here when it is missing.
  function load(src) {
    return new Promise((resolve, reject) => {
      const el = document.createElement("script");
      el.src = src;
      el.onload = resolve;
      el.onerror = reject;
      document.head.appendChild(el);
    });
  }

  // A chart with nothing to draw says why in a line, without keeping the chart's height.
  function empty(el, text) {
    if (el.classList.contains("js-plotly-plot")) Plotly.purge(el);
    el.innerHTML = "";
    el.classList.add("empty");
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    el.appendChild(p);
  }

  function plot(el, data, layout) {
    if (el.classList.contains("empty")) {
      el.innerHTML = "";
      el.classList.remove("empty");
    }
    Plotly.react(el, data, layout, Charts.config);
  }

  function cumulative(el, resp) {
    const days = resp.days.filter((d) => d.cum_cost !== null || d.cum_value !== null);
    if (!days.length) return empty(el, "No cost or value to chart yet: " + (resp.problems[0] || "no data"));
    const t = Charts.theme();
    const x = days.map((d) => Charts.localTime(d.end));
    const cur = resp.currency;
    const data = [];
    if (days.some((d) => d.cum_cost !== null)) {
      data.push({ x: x, y: days.map((d) => d.cum_cost), type: "scatter", mode: "lines", name: "Cumulative cost",
                  line: { color: t.colors[2], width: 2 }, hovertemplate: "%{y:,.2f} " + cur + "<extra>cost</extra>" });
    }
    if (days.some((d) => d.cum_value !== null)) {
      data.push({ x: x, y: days.map((d) => d.cum_value), type: "scatter", mode: "lines", name: "Cumulative value",
                  line: { color: t.colors[1], width: 2 }, hovertemplate: "%{y:,.2f} " + cur + "<extra>value</extra>" });
    }
    const extra = { xaxis: Object.assign(Charts.layout("").xaxis, { title: { text: "Day ending (" + zone + ")", font: { color: t.muted, size: 11 } } }) };
    const layout = Charts.layout("Cumulative (" + cur + ")", extra);
    if (resp.break_even) {
      const be = resp.break_even;
      data.push({ x: [Charts.localTime(be.t)], y: [be.cum_cost], type: "scatter", mode: "markers", name: "Break-even",
                  marker: { color: t.text, size: 10, symbol: "diamond" },
                  hovertemplate: "break-even %{x}<extra></extra>" });
      layout.annotations = [{ x: Charts.localTime(be.t), y: be.cum_cost, text: "break-even", showarrow: true,
                              arrowhead: 0, ax: 0, ay: -30, font: { color: t.text } }];
    }
    plot(el, data, layout);
  }

  function breakdown(el, resp) {
    const days = resp.days.filter((d) => d.cost !== null);
    if (!days.length) return empty(el, "No costs yet: set a cost profile.");
    const t = Charts.theme();
    const x = days.map((d) => Charts.localTime(d.t));
    const cur = resp.currency;
    const parts = [["amortisation", "Amortisation", t.colors[0]], ["energy_cost", "Energy × PUE", t.colors[2]],
                   ["fixed", "Fixed", t.colors[3]]];
    const data = parts.map(([key, name, color]) => ({
      x: x, y: days.map((d) => d[key]), type: "bar", name: name, marker: { color: color },
      hovertemplate: "%{y:,.2f} " + cur + "<extra>" + name + "</extra>",
    }));
    const extra = { barmode: "stack",
                    xaxis: Object.assign(Charts.layout("").xaxis, { title: { text: "Day starting (" + zone + ")", font: { color: t.muted, size: 11 } } }) };
    plot(el, data, Charts.layout("Cost per day (" + cur + ")", extra));
  }

  async function draw(cfg) {
    if (!window.Plotly) await load(script.dataset.plotly);
    if (!window.Charts) await load(script.dataset.charts);
    const r = await fetch(cfg.url, { headers: { Accept: "application/json" } });
    const resp = await r.json();
    if (!r.ok) throw new Error(resp.error || r.statusText);
    const cum = document.getElementById("roi-cumulative");
    const bars = document.getElementById("roi-breakdown");
    if (cum) cumulative(cum, resp);
    if (bars) breakdown(bars, resp);
  }

  localize();
  const cfgEl = document.getElementById("roi-config");
  if (cfgEl) {
    const cfg = JSON.parse(cfgEl.textContent);
    draw(cfg).catch((err) => console.warn("RoI charts failed", err));
    document.addEventListener("themechange", () => draw(cfg).catch(() => {}));  // static/js/base.js
  }
})();
