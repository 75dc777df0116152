// Shared chart helpers: theme colours from CSS variables, local times, byte units, polling.
// Plotly is loaded before this file (static/vendor/plotly-*.min.js).
"use strict";

window.Charts = (function () {
  const config = { displaylogo: false, responsive: true, displayModeBar: false, doubleClick: false };

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

  const MINUTE = 60000, HOUR = 3600000, DAY = 86400000;  // tick spacings, in ms

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
      // ISO dates and 24-hour times, as everywhere else (Plotly's own ticks read "Nov 30, 2026").
      // Plotly takes the first stop whose range holds the tick spacing, both ends included: each
      // upper end is 1 ms short of the next stop, or daily ticks would all read "00:00". Ticks
      // hours apart carry the day, which a 24 h or 7 d range crosses.
      xaxis: Object.assign({}, axis, { type: "date", hoverformat: "%Y-%m-%d %H:%M:%S",
        tickformatstops: [{ dtickrange: [null, MINUTE - 1], value: "%H:%M:%S" },
                          { dtickrange: [MINUTE, 3 * HOUR - 1], value: "%H:%M" },
                          { dtickrange: [3 * HOUR, DAY - 1], value: "%m-%d %H:%M" },
                          { dtickrange: [DAY, null], value: "%Y-%m-%d" }],
        title: { text: "Time (" + zone + ")", font: { color: t.muted, size: 11 } } }),
      yaxis: Object.assign({}, axis, { title: { text: yTitle, font: { color: t.muted, size: 11 } },
        rangemode: "tozero", fixedrange: true }),  // a drag selects times only
      dragmode: "zoom",
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
  // A call while fn runs is not dropped: fn runs once more when it is done (the page may have
  // changed what fn draws, such as the range, after fn started).
  function poll(fn, visibleMs, hiddenMs) {
    let timer = null;
    let running = false;
    let again = false;
    async function tick() {
      clearTimeout(timer);
      if (running) { again = true; return; }
      running = true;
      do {
        again = false;
        try { await fn(); } catch (err) { console.warn("refresh failed", err); }
      } while (again);
      running = false;
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

  // ---- the time range: a preset back from now or a custom from/to, kept in the URL ------------
  // ?range=6h, or ?from=ISO&to=ISO (to may be absent: until now); ?refresh=off stops redrawing.

  const PRESETS = ["15m", "1h", "6h", "24h", "7d", "30d"];

  function readRange() {
    const q = new URLSearchParams(window.location.search);
    if (q.get("from")) return { from: q.get("from"), to: q.get("to") || null };
    const preset = q.get("range");
    return { preset: PRESETS.includes(preset) ? preset : "1h" };
  }

  // The API's since/until for a range; key names the range (Plotly's uirevision).
  function rangeParams(r) { return r.preset ? { since: r.preset } : Object.assign({ since: r.from }, r.to ? { until: r.to } : {}); }
  function rangeKey(r) { return r.preset || r.from + "/" + (r.to || "now"); }

  // Plotly's axis strings are wall-clock times in the browser's zone ("2026-11-30 10:48:12.3").
  function fromAxis(text) { return new Date(String(text).replace(" ", "T")); }

  // The custom range's inputs are text in the app's one format, local "YYYY-MM-DD HH:MM" (24 h):
  // a native datetime picker would show the browser locale's format (11/30/2026, 12:18 AM).
  function toInput(date) {
    return localTime(date.getTime()).slice(0, 16);
  }

  // Redraw on a timer only for ranges that end now, while auto-refresh is on.
  function isLive(range) {
    const auto = document.getElementById("auto-refresh");
    return (!auto || auto.checked) && (Boolean(range.preset) || !range.to);
  }

  // The range picker (templates/fleet/_range_picker.html): presets, custom from/to, drag-to-zoom
  // on any chart made zoomable, auto-refresh on or off. onChange(range) runs after every change.
  function rangePicker(onChange) {
    const root = document.getElementById("range-picker");
    let range = readRange();
    const q = new URLSearchParams(window.location.search);
    const auto = document.getElementById("auto-refresh");
    if (auto) auto.checked = q.get("refresh") !== "off";
    const form = document.getElementById("range-custom");

    function show() {
      if (!root) return;
      root.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === range.preset)));
      if (form && range.from) {
        form.elements.from.value = toInput(new Date(range.from));
        form.elements.to.value = range.to ? toInput(new Date(range.to)) : "";
      }
    }

    function writeUrl() {
      const url = new URL(window.location.href);
      for (const k of ["range", "from", "to"]) url.searchParams.delete(k);
      if (range.preset) url.searchParams.set("range", range.preset);
      else {
        url.searchParams.set("from", range.from);
        if (range.to) url.searchParams.set("to", range.to);
      }
      if (auto && !auto.checked) url.searchParams.set("refresh", "off"); else url.searchParams.delete("refresh");
      window.history.replaceState(null, "", url);
      // The page's CSV link (machine page) downloads the range the page shows.
      const csv = document.getElementById("range-csv");
      if (csv) {
        const link = new URL(csv.href);
        link.search = url.search;
        csv.href = link.toString();
      }
    }

    function set(next) {
      range = next;
      show();
      writeUrl();
      onChange(range);
      // Charts the page's own script does not draw (efficiency.js) follow the range too.
      document.dispatchEvent(new CustomEvent("rangechange"));
    }

    if (root) {
      root.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => set({ preset: b.dataset.range })));
    }
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const from = fromAxis(form.elements.from.value.trim());
        const to = form.elements.to.value.trim() ? fromAxis(form.elements.to.value.trim()) : null;
        const bad = Number.isNaN(from.getTime()) ? form.elements.from
          : to && Number.isNaN(to.getTime()) ? form.elements.to
          : to && !(to > from) ? form.elements.to : null;
        form.querySelectorAll(".field-error").forEach((e) => e.remove());
        if (bad) {
          const note = document.createElement("span");
          note.className = "field-error";
          note.setAttribute("role", "alert");
          note.textContent = bad === form.elements.to && !Number.isNaN(to.getTime())
            ? "must be later than From" : "expected YYYY-MM-DD HH:MM";
          bad.insertAdjacentElement("afterend", note);
          return;
        }
        set({ from: from.toISOString(), to: to ? to.toISOString() : null });
      });
    }
    if (auto) auto.addEventListener("change", writeUrl);
    show();

    return {
      get: () => range,
      set: set,
      live: () => isLive(range),
      // Drag across the chart: its x range becomes the page's custom range.
      zoomable(el) {
        if (el.dataset.zoomable) return;
        el.dataset.zoomable = "1";
        el.on("plotly_relayout", (ev) => {
          const a = ev["xaxis.range[0]"], b = ev["xaxis.range[1]"];
          if (a === undefined || b === undefined) return;
          const from = fromAxis(a), to = fromAxis(b);
          if (Number.isNaN(from.getTime()) || !(to > from)) return;
          set({ from: from.toISOString(), to: to.toISOString() });
        });
      },
    };
  }

  // A note across the chart: why it is empty.
  function note(text) {
    return [{ text: text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
              font: { color: theme().muted } }];
  }

  return { config, cssVar, theme, withAlpha, zone, localTime, byteUnit, formatBytes, scale,
           layout, bandTraces, sparkline, poll, ago, tickAgo,
           PRESETS, readRange, rangeParams, rangeKey, rangePicker, isLive, note };
})();
