// Every page, loaded in <head> before the body is drawn: the colour theme (the browser's setting
// until the toggle chooses one, then that choice, kept in localStorage), the browser's time zone
// for server-rendered times (a cookie, read by dashboard/web/middleware.py), the collapsed
// navigation on narrow screens, bar widths (data-width: no inline styles under the CSP), and panels
// that load on their own (data-panel-url).
"use strict";

(function () {
  const root = document.documentElement;
  const system = window.matchMedia("(prefers-color-scheme: dark)");

  function chosen() {
    try { return localStorage.getItem("theme"); } catch (err) { return null; }
  }

  function apply() {
    const theme = chosen() || (system.matches ? "dark" : "light");
    root.dataset.theme = theme;
    root.classList.toggle("dark-mode", theme === "dark");  // Swagger UI's own dark rules
    const button = document.getElementById("theme-toggle");
    if (button) {
      button.setAttribute("aria-pressed", String(theme === "dark"));
      button.title = theme === "dark" ? "Switch to the light theme" : "Switch to the dark theme";
    }
    return theme;
  }

  function changed() {
    apply();
    document.dispatchEvent(new CustomEvent("themechange"));  // charts redraw in the new colours
  }

  apply();
  system.addEventListener("change", () => { if (!chosen()) changed(); });

  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone) document.cookie = "tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; SameSite=Lax";

  function widths(scope) {
    const pct = (v) => Math.max(0, Math.min(100, Number(v) || 0)) + "%";
    scope.querySelectorAll("[data-width]").forEach((el) => { el.style.width = pct(el.dataset.width); });
    scope.querySelectorAll("[data-height]").forEach((el) => { el.style.height = pct(el.dataset.height); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    apply();
    const toggle = document.getElementById("theme-toggle");
    if (toggle) {
      toggle.addEventListener("click", () => {
        try { localStorage.setItem("theme", root.dataset.theme === "dark" ? "light" : "dark"); } catch (err) { /* private mode */ }
        changed();
      });
    }
    const nav = document.querySelector(".nav");
    const menu = document.getElementById("nav-toggle");
    if (nav && menu) {
      menu.addEventListener("click", () => {
        const open = nav.classList.toggle("open");
        menu.setAttribute("aria-expanded", String(open));
      });
    }
    widths(document);
    // A chart drawn inside a closed <details> has no width yet: opening it resizes (Plotly's responsive mode).
    document.addEventListener("toggle", (event) => {
      if (event.target.open) window.dispatchEvent(new Event("resize"));
    }, true);
    // Partials swapped in by a page's refresh bring new bars.
    new MutationObserver((records) => {
      for (const r of records) r.addedNodes.forEach((n) => { if (n.nodeType === 1) widths(n.parentNode || n); });
    }).observe(document.body, { childList: true, subtree: true });
  });
})();

// Panels that load on their own (the machine page's throughput, jobs, RoI and capacity): a
// server-rendered fragment fetched from its data-panel-url once the page is shown, so the page itself
// answers at once. Its placeholder says it is loading, and why not when the fetch fails. The page's
// query string (its range) goes with each request. A loaded panel's scripts are run, then a
// "panelload" event ({detail: {panel, element}}) tells the page's other scripts (machine.js draws
// the throughput charts on it).
(function () {
  // Scripts parsed from HTML do not run: replace each with a fresh element that does (CSP 'self'
  // allows the panels' own src scripts; JSON data blocks are left as they are).
  function runScripts(nodes) {
    for (const node of nodes) {
      if (node.nodeType !== Node.ELEMENT_NODE) continue;
      const scripts = node.matches("script") ? [node] : Array.from(node.querySelectorAll("script"));
      for (const old of scripts) {
        if (!old.src) continue;
        const el = document.createElement("script");
        for (const attr of Array.from(old.attributes)) el.setAttribute(attr.name, attr.value);
        el.async = false;  // in document order, as they would have run in the page
        old.replaceWith(el);
      }
    }
  }

  function fail(holder, why) {
    holder.removeAttribute("aria-busy");
    holder.classList.add("panel-failed");
    const status = holder.querySelector("[data-panel-status]");
    const title = holder.querySelector("h2");
    status.textContent = "Could not load " + (title ? title.textContent : "this panel") + " (" + why +
      "). Reload the page to try again.";
  }

  async function load(holder) {
    const url = new URL(holder.dataset.panelUrl, window.location.href);
    new URLSearchParams(window.location.search).forEach((v, k) => { if (k !== "partial") url.searchParams.set(k, v); });
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (err) {
      fail(holder, "network error");
      return;
    }
    if (response.redirected) { fail(holder, "signed out"); return; }
    if (!response.ok) { fail(holder, "HTTP " + response.status); return; }
    const template = document.createElement("template");
    template.innerHTML = await response.text();
    const nodes = Array.from(template.content.childNodes);
    const element = nodes.find((n) => n.nodeType === Node.ELEMENT_NODE) || null;
    holder.replaceWith(...nodes);
    runScripts(nodes);
    document.dispatchEvent(new CustomEvent("panelload", { detail: { panel: holder.dataset.panel, element: element } }));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-panel-url]").forEach((holder) => {
      load(holder).catch((err) => { console.warn("panel failed", err); fail(holder, "error"); });
    });
  });
})();
