// Shared chart helpers: theme colours from CSS variables, local times, byte units, polling.
// Plotly is loaded before this file (static/vendor/plotly-*.min.js).
"use strict";

window.Charts = (function () {
  const config = { displaylogo: false, responsive: true, displayModeBar: false };

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function theme() {
    const colors = [];
    for (let i = 1; i <= 8; i++) colors.push(cssVar("--chart-" + i) || "#2563eb");
    return {
      text: cssVar("--text"), muted: cssVar("--muted"), grid: cssVar("--grid"),
      border: cssVar("--border"), surface: cssVar("--surface"), colors: colors,
    };
  }

  // "#rrggbb" (or "#rgb") -> "rgba(r, g, b, alpha)"; other colour syntaxes are returned as is.
  function withAlpha(color, alpha) {
    let hex = color.replace("#", "");
    if (!/^[0-9a-f]{3}([0-9a-f]{3})?$/i.test(hex)) return color;
    if (hex.length === 3) hex = hex.split("").map((c) => c + c).join("");
    const n = parseInt(hex, 16);
    return "rgba(" + (n >> 16) + ", " + ((n >> 8) & 255) + ", " + (n & 255) + ", " + alpha + ")";
  }

  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

  function pad(n) { return String(n).padStart(2, "0"); }

  // Epoch milliseconds -> "YYYY-MM-DD HH:MM:SS" wall-clock time in the browser's zone, which
  // Plotly plots as given (it has no time-zone support of its own).
  function localTime(ms) {
    const d = new Date(ms);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  const BYTE_UNITS = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];

  // The binary unit that suits the largest value: axes show "GiB" and numbers scaled to it.
  function byteUnit(maxValue) {
    for (const [unit, size] of BYTE_UNITS) if (maxValue >= size) return { unit: unit, size: size };
    return { unit: "B", size: 1 };
  }

  function formatBytes(value) {
    if (value === null || value === undefined) return "–";
    const u = byteUnit(Math.abs(value));
    const scaled = value / u.size;
    return (scaled >= 100 ? scaled.toFixed(0) : scaled.toFixed(1)) + " " + u.unit;
  }

  function scale(values, size) {
    return values.map((v) => (v === null || v === undefined ? null : v / size));
  }

  function layout(yTitle, extra) {
    const t = theme();
    const axis = { gridcolor: t.grid, linecolor: t.border, zerolinecolor: t.border,
                   tickfont: { color: t.muted }, automargin: true };
    return Object.assign({
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: t.text, size: 12 },
      margin: { l: 56, r: 12, t: 8, b: 40 },
      showlegend: true,
      legend: { orientation: "h", y: -0.3, font: { color: t.muted } },
      hovermode: "x unified",
      xaxis: Object.assign({}, axis, { type: "date",
        title: { text: "Time (" + zone + ")", font: { color: t.muted, size: 11 } } }),
      yaxis: Object.assign({}, axis, { title: { text: yTitle, font: { color: t.muted, size: 11 } },
        rangemode: "tozero" }),
      uirevision: "keep",  // zoom and hidden traces survive each refresh
    }, extra || {});
  }

  // A mean line with a shaded min-max band behind it: three traces, band edges first.
  function bandTraces(name, x, min, mean, max, color, unit) {
    const hover = "%{y:.1f} " + unit;
    const traces = [];
    if (min && max) {
      traces.push({ x: x, y: min, type: "scatter", mode: "lines", line: { width: 0 },
                    hoverinfo: "skip", showlegend: false, legendgroup: name, connectgaps: false });
      traces.push({ x: x, y: max, type: "scatter", mode: "lines", line: { width: 0 },
                    fill: "tonexty", fillcolor: withAlpha(color, 0.18), hoverinfo: "skip",
                    showlegend: false, legendgroup: name, connectgaps: false });
    }
    traces.push({ x: x, y: mean, type: "scatter", mode: "lines", name: name, legendgroup: name,
                  line: { color: color, width: 1.6 }, hovertemplate: hover + "<extra>" + name + "</extra>",
                  connectgaps: false });
    return traces;
  }

  // lines: [{name, values (0-100), color}], drawn without axes on a fixed 0-100 scale.
  function sparkline(el, lines) {
    const data = lines.map((line, i) => ({
      y: line.values, type: "scatter", mode: "lines", name: line.name,
      line: { color: line.color, width: 1.4 },
      fill: i === 0 ? "tozeroy" : "none", fillcolor: withAlpha(line.color, 0.12), hoverinfo: "skip",
    }));
    Plotly.react(el, data, {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      margin: { l: 0, r: 0, t: 2, b: 2 }, showlegend: false,
      xaxis: { visible: false, fixedrange: true },
      yaxis: { visible: false, fixedrange: true, range: [0, 100] },
    }, { displayModeBar: false, staticPlot: true, responsive: true });
  }

  // Call fn now and then every `visibleMs`, or every `hiddenMs` while the tab is hidden;
  // coming back to the tab refreshes at once.
  function poll(fn, visibleMs, hiddenMs) {
    let timer = null;
    let running = false;
    async function tick() {
      clearTimeout(timer);
      if (!running) {
        running = true;
        try { await fn(); } catch (err) { console.warn("refresh failed", err); }
        running = false;
      }
      timer = setTimeout(tick, document.hidden ? hiddenMs : visibleMs);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    tick();
    return { now: tick };
  }

  // "12 s ago" / "3 min ago" / "2 h ago" / "4 d ago"
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  // Keep every [data-last-seen] ("last seen 12 s ago") ticking between refreshes.
  function tickAgo(root) {
    (root || document).querySelectorAll("[data-last-seen]").forEach((el) => {
      el.textContent = "last seen " + ago(Number(el.dataset.lastSeen));
    });
  }

  return { config, cssVar, theme, withAlpha, zone, localTime, byteUnit, formatBytes, scale,
           layout, bandTraces, sparkline, poll, ago, tickAgo };
})();
