// The API's interactive documentation: Swagger UI from static/vendor (no CDN), its settings from
// the page (json_script), the session's CSRF token on every request it sends.
"use strict";

(function () {
  const settings = JSON.parse(document.getElementById("swagger-settings").textContent);
  const csrf = (document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/) || [])[1];
  SwaggerUIBundle(Object.assign(settings, {
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    requestInterceptor: (req) => {
      if (csrf) req.headers["X-CSRFToken"] = decodeURIComponent(csrf);
      return req;
    },
  }));
})();
