// Jobs pages: times in the browser's zone, running durations that tick, the list's refresh, and
// the submit form's small touches. job.js (one job's page) uses JobTimes from here.
"use strict";

window.JobTimes = window.JobTimes || (function () {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

  function pad(n) { return String(n).padStart(2, "0"); }

  // <time datetime="ISO">… UTC</time> -> "YYYY-MM-DD HH:MM:SS" in the browser's zone, which
  // [data-zone] elements name.
  function localize(root) {
    (root || document).querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(d.getTime())) return;
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      el.title = zone;
    });
    (root || document).querySelectorAll("[data-zone]").forEach((el) => { el.textContent = "Times in " + zone; });
  }

  // The same words as the `duration` template filter (dashboard/jobs/templatetags/job_format.py).
  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function tick(root) {
    (root || document).querySelectorAll("[data-running-since]").forEach((el) => {
      el.textContent = duration((Date.now() - Number(el.dataset.runningSince)) / 1000);
    });
  }

  localize(document);
  tick(document);
  setInterval(() => { if (!document.hidden) tick(document); }, 1000);
  return { zone, localize, duration, tick };
})();

(function listPage() {
  const root = document.getElementById("jobs");
  const filters = document.getElementById("job-filters");
  if (!root || !filters) return;
  filters.addEventListener("change", () => filters.submit());

  async function refresh() {
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.redirected || !response.ok) return;  // logged out or a server error: keep what we show
    root.innerHTML = await response.text();
    JobTimes.localize(root);
    JobTimes.tick(root);
  }

  function schedule() {
    setTimeout(async () => {
      try { await refresh(); } catch (err) { console.warn("refresh failed", err); }
      schedule();
    }, document.hidden ? 60000 : 5000);
  }
  schedule();
})();

(function submitForm() {
  // Only training jobs can be preempted: the box means nothing for a serving job.
  const kind = document.getElementById("id_kind");
  const preemptible = document.getElementById("id_preemptible");
  if (!kind || !preemptible) return;
  function sync() {
    const serving = kind.value === "serve";
    preemptible.disabled = serving;
    if (serving) preemptible.checked = false;
  }
  kind.addEventListener("change", sync);
  sync();
})();
