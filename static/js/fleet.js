// Fleet overview: re-fetch the server-rendered machine list (with the page's filters, sort and
// page number, which live in the URL) and swap it in; draw sparklines.
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

  async function refresh() {
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
    if (response.redirected || !response.ok) return;  // logged out, or a server error: keep what we show
    // The throughput card keeps its drawn charts: the fresh copy only marks where it goes.
    const kept = document.getElementById("fleet-throughput");
    root.innerHTML = await response.text();
    const fresh = document.getElementById("fleet-throughput");
    if (kept && fresh) fresh.replaceWith(kept);
    drawSparklines();
    if (window.Throughput) await Throughput.fleet();
    Charts.tickAgo(root);
  }

  drawSparklines();
  if (window.Throughput) Throughput.fleet().catch((err) => console.warn("throughput failed", err));
  Charts.tickAgo(root);
  setInterval(() => { if (!document.hidden) Charts.tickAgo(root); }, 1000);
  // The first render came with the page: start polling after one period.
  setTimeout(() => Charts.poll(refresh, 10000, 60000), 10000);
})();
