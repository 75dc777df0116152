// Every page, loaded in <head> before the body is drawn: the colour theme (the browser's setting
// until the toggle chooses one, then that choice, kept in localStorage), the browser's time zone
// for server-rendered times (a cookie, read by dashboard/web/middleware.py), the collapsed
// navigation on narrow screens, and bar widths (data-width: no inline styles under the CSP).
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
