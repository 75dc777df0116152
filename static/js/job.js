// One job's page: tail its log from /api/v1/jobs/ID/log every 2 s and swap in the server-rendered
// status and attempts when they change, until the job has finished.
"use strict";

(function () {
  const cfgEl = document.getElementById("job-live");
  const log = document.getElementById("job-log");
  if (!cfgEl || !log) return;
  const cfg = JSON.parse(cfgEl.textContent);
  const note = document.getElementById("log-note");
  const FINISHED = ["succeeded", "failed", "cancelled", "lost"];
  const PAGE = 2000;  // the API's most chunks per answer
  let after = 0;
  let attempt = null;
  let shown = document.getElementById("job-state").dataset.status;
  let polls = 0;

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  }

  function append(chunks) {
    if (!chunks.length) return;
    const follow = atBottom();
    const placeholder = log.querySelector(".placeholder");
    if (placeholder) placeholder.remove();
    const frag = document.createDocumentFragment();
    for (const c of chunks) {
      if (c.attempt !== attempt) {
        if (attempt !== null || c.attempt > 1) {
          const mark = document.createElement("span");
          mark.className = "attempt-mark";
          mark.textContent = "── attempt " + c.attempt + " ──\n";
          frag.append(mark);
        }
        attempt = c.attempt;
      }
      const span = document.createElement("span");
      span.className = c.stream;  // "stdout" or "stderr"
      span.textContent = c.text;
      frag.append(span);
    }
    log.append(frag);
    if (follow) log.scrollTop = log.scrollHeight;
  }

  async function readLog() {
    let status = null;
    for (;;) {
      const url = new URL(cfg.logUrl, window.location.href);
      url.searchParams.set("after", String(after));
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error("log: HTTP " + response.status);
      const body = await response.json();
      append(body.chunks);
      after = body.last_id;
      status = body.status;
      if (body.chunks.length < PAGE) return status;
    }
  }

  async function refreshState() {
    const response = await fetch(cfg.stateUrl, { credentials: "same-origin" });
    if (response.redirected || !response.ok) return false;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["job-state", "job-attempts", "job-gpu-processes"]) {
      const fresh = doc.getElementById(id);
      const current = document.getElementById(id);
      if (fresh && current) current.replaceWith(fresh);
    }
    JobTimes.localize(document);
    JobTimes.tick(document);
    return true;
  }

  async function poll() {
    let status = shown;
    try {
      status = await readLog();
      polls += 1;
      // The status message changes without the status (why a queued job waits): look every 10 s too.
      if ((status !== shown || polls % 5 === 0) && await refreshState()) shown = status;
      showNote(status);
    } catch (err) {
      console.warn("job refresh failed", err);
      if (note) note.textContent = "connection lost; retrying";
    }
    // A finished job's answer already carried every chunk it will ever have.
    if (FINISHED.includes(status) && status === shown) return;
    setTimeout(poll, document.hidden ? 10000 : 2000);
  }

  function showNote(status) {
    if (!note) return;
    if (FINISHED.includes(status)) note.textContent = "";
    else note.textContent = atBottom() ? "following" : "paused: scroll to the end to follow";
  }

  log.addEventListener("scroll", () => showNote(shown));
  poll();
})();
