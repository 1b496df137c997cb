// Renders /openapi.json with Swagger UI. A file rather than an inline script, so the page's
// Content-Security-Policy can keep script-src 'self'.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge loads an image from validator.swagger.io: nothing external.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
