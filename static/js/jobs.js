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

(function templatePicker() {
  // Each machine option carries what its worker allows (data-policy, JSON, written by the server);
  // the picker lists those templates and a click puts one in the command field.
  const machine = document.getElementById("id_machine");
  const list = document.getElementById("templates");
  const note = document.getElementById("templates-note");
  const command = document.getElementById("id_command");
  if (!machine || !list || !note || !command) return;

  function show() {
    const option = machine.options[machine.selectedIndex];
    let policy = null;
    try { policy = JSON.parse((option && option.dataset.policy) || "null"); } catch (err) { policy = null; }
    if (!policy) return;
    list.replaceChildren();
    policy.templates.forEach((t) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "template";
      button.title = t.name;
      button.dataset.command = t.command;
      button.dataset.workdir = t.workdir || "";
      button.dataset.kind = t.kind || "";
      const code = document.createElement("code");
      code.textContent = t.command;
      button.appendChild(code);
      list.appendChild(button);
    });
    if (!policy.templates.length) {
      const none = document.createElement("span");
      none.className = "muted";
      none.textContent = "none";
      list.appendChild(none);
    }
    note.textContent = policy.note;
  }

  // The first argument holding a pattern, selected so that typing replaces it.
  function selectPattern(input) {
    const match = /\S*\*\S*/.exec(input.value);
    input.focus();
    if (match) input.setSelectionRange(match.index, match.index + match[0].length);
  }

  // A template asks for one GPU of 4 GiB where the machine (or the fleet, for automatic placement)
  // has one, and for none where it has none, so the first click gives a job that can run.
  function fitToMachine() {
    const option = machine.options[machine.selectedIndex];
    const count = option && option.dataset.gpus;
    if (count === undefined || count === "") return;
    const gpus = document.getElementById("id_gpus");
    const memory = document.getElementById("id_gpu_memory_gb");
    if (!gpus || !memory) return;
    if (Number(count) === 0) { gpus.value = "0"; memory.value = "0"; }
    else if (Number(gpus.value) > Number(count)) gpus.value = count;
    gpus.dispatchEvent(new Event("change", { bubbles: true }));
  }

  list.addEventListener("click", (event) => {
    const button = event.target.closest("button.template");
    if (!button) return;
    fitToMachine();
    command.value = button.dataset.command;
    const name = document.getElementById("id_name");  // a first job needs nothing typed
    if (name && !name.value) name.value = button.dataset.kind ? button.dataset.kind + "-demo" : button.title;
    const shell = document.getElementById("id_shell");
    if (shell) shell.checked = false;  // templates are argument lists
    const kind = document.getElementById("id_kind");
    if (kind && button.dataset.kind) {
      kind.value = button.dataset.kind;
      kind.dispatchEvent(new Event("change"));
    }
    const workdir = document.getElementById("id_workdir");
    if (workdir && button.dataset.workdir && !workdir.value) workdir.value = button.dataset.workdir;
    selectPattern(command);
  });
  machine.addEventListener("change", () => { show(); fitToMachine(); });
})();

(function placementNow() {
  // Under the machine choice: which machines could start a job of this size now, or why none ever
  // could (the server's own rule, GET /api/v1/jobs/placement).
  const box = document.getElementById("placement-now");
  const text = document.getElementById("placement-text");
  const form = box && box.closest("form");
  if (!box || !text || !form) return;
  let timer = null;
  async function check() {
    const url = new URL(box.dataset.url, window.location.href);
    for (const name of ["gpus", "gpu_memory_gb", "kind", "machine"]) {
      const field = form.elements[name];
      if (field) url.searchParams.set(name, field.value || (name === "machine" ? "" : "0"));
    }
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;  // a half-typed number: the form says what is wrong on submit
    const answer = await response.json();
    text.className = answer.refusal ? "bad" : "muted";
    text.textContent = answer.refusal ? "Can never run: " + answer.refusal.error
      : answer.ready.length ? "Could start now on: " + answer.ready.join(", ")
      : "No machine has room for it now: it would wait in the queue.";
  }
  form.addEventListener("change", (event) => {
    if (!["gpus", "gpu_memory_gb", "kind", "machine"].includes(event.target.name)) return;
    clearTimeout(timer);
    timer = setTimeout(() => check().catch((err) => console.warn("placement check failed", err)), 150);
  });
})();
