// Reports: ask for the page in the browser's zone, keep the period picker tidy, print, and draw
// two charts as wide as their cards on screen and at a size that fits an A4 page when printed
// (620 × 260 px, about 164 × 69 mm).
"use strict";

(function () {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  const params = new URLSearchParams(location.search);
  if (zone && !params.has("tz")) {
    // Days, weeks and months start at midnight where the reader is, not where the server is.
    params.set("tz", zone);
    location.replace(location.pathname + "?" + params.toString());
    return;
  }

  const form = document.getElementById("report-picker");
  if (form) {
    if (!form.elements.tz.value) form.elements.tz.value = zone;
    const sync = () => {
      const custom = form.elements.period.value === "custom";
      form.querySelectorAll(".for-custom").forEach((el) => { el.hidden = !custom; el.querySelector("input").disabled = !custom; });
      form.querySelectorAll(".for-calendar").forEach((el) => { el.hidden = custom; el.querySelector("input").disabled = custom; });
    };
    form.elements.period.addEventListener("change", sync);
    sync();
  }
  document.querySelectorAll("[data-print]").forEach((b) => b.addEventListener("click", () => window.print()));

  const source = document.getElementById("report-chart-data");
  if (!source || !window.Plotly) return;
  const data = JSON.parse(source.textContent);
  const size = { height: 260 };
  const PRINT = { width: 620, height: 260 };
  const config = Charts.config;
  const drawn = [];
  const paper = (on) => drawn.forEach((el) => Plotly.relayout(el, on ? PRINT : { width: null, autosize: true }));
  window.addEventListener("beforeprint", () => paper(true));
  window.addEventListener("afterprint", () => paper(false));
  window.matchMedia("print").addEventListener("change", (event) => paper(event.matches));

  function empty(el, text) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    el.replaceChildren(p);
    el.classList.add("empty");
  }

  const util = document.getElementById("chart-report-util");
  if (data.utilisation.t.length) {
    const t = Charts.theme();
    const x = data.utilisation.t.map(Charts.localTime);
    const traces = data.utilisation.series.map((s, i) => ({
      x: x, y: s.values, type: "scatter", mode: "lines", name: s.name, connectgaps: false,
      line: { width: 1.4, color: s.name === "CPU" ? t.muted : t.colors[i % t.colors.length], dash: s.name === "CPU" ? "dot" : "solid" },
      hovertemplate: "%{y:.1f} %<extra>" + s.name + "</extra>",
    }));
    const layout = Charts.layout("Utilisation (%)", size);
    layout.yaxis.range = [0, 101];
    layout.uirevision = undefined;
    Plotly.react(util, traces, layout, config);
    drawn.push(util);
  } else {
    empty(util, "No rollups for this period yet.");
  }

  const compare = document.getElementById("chart-report-compare");
  const devices = data.devices.filter((d) => d.now !== null || d.before !== null);
  if (devices.length) {
    const t = Charts.theme();
    const names = devices.map((d) => d.name.split(" · ")[0]);
    const bar = (key, name, color) => ({
      x: names, y: devices.map((d) => d[key]), type: "bar", name: name, marker: { color: color },
      hovertemplate: "%{y:.1f} %<extra>" + name + "</extra>",
    });
    const layout = Charts.layout("Mean utilisation (%)", Object.assign({ barmode: "group" }, size));
    layout.xaxis = Object.assign(layout.xaxis, { type: "category", title: { text: "Device", font: { color: t.muted, size: 11 } } });
    layout.yaxis.range = [0, 101];
    Plotly.react(compare, [bar("before", "Period before", t.muted), bar("now", "This period", t.colors[0])], layout, config);
    drawn.push(compare);
  } else {
    empty(compare, "No utilisation in either period.");
  }
})();
