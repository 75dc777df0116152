// Planner page: the spare model rows appear on demand, and the fleet's hour-of-week profile
// (utilisation and serving tokens, UTC) is charted from the JSON the page carries.
"use strict";

(function () {
  const add = document.getElementById("plan-add-model");
  function spares() { return document.querySelectorAll("#plan-form tr.serve-row.spare"); }
  spares().forEach((row) => { row.hidden = true; });
  if (add) {
    add.hidden = spares().length === 0;
    add.addEventListener("click", () => {
      const next = Array.from(spares()).find((row) => row.hidden);
      if (next) next.hidden = false;
      add.hidden = !Array.from(spares()).some((row) => row.hidden);
    });
  }

  const data = document.getElementById("plan-profile-data");
  const el = document.getElementById("plan-profile");
  if (!data || !el || typeof Plotly === "undefined") return;
  const profile = JSON.parse(data.textContent);
  if (!profile.some((p) => p.util !== null || p.tokens > 0)) {
    el.textContent = "No serving history yet: the profile appears once machines report hour rollups.";
    el.className = "muted";
    return;
  }
  const x = profile.map((p) => p.label);
  Plotly.react(el, [
    { x: x, y: profile.map((p) => p.util), name: "GPU utilisation (%)", type: "scatter", mode: "lines" },
    { x: x, y: profile.map((p) => p.tokens), name: "Generated tokens per week", type: "bar", yaxis: "y2", opacity: 0.5 },
  ], {
    height: 300,
    margin: { t: 10, r: 60, b: 80, l: 60 },
    xaxis: { title: { text: "Hour of the week (UTC)" }, nticks: 14 },
    yaxis: { title: { text: "Utilisation (%)" }, range: [0, 100] },
    yaxis2: { title: { text: "Tokens" }, overlaying: "y", side: "right" },
    legend: { orientation: "h" },
  }, { displayModeBar: false, responsive: true });
})();
