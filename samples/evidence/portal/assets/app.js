// Export Center developer portal: renders the endpoint table offline (no fetch, no CDN).
(function () {
  "use strict";

  var ENDPOINTS = [
    { method: "GET", path: "/export-center/profiles", purpose: "List export profiles" },
    { method: "POST", path: "/export-center/runs", purpose: "Start an export run for a profile" },
    { method: "GET", path: "/export-center/runs/{runId}", purpose: "Get run status and artifacts" },
    { method: "GET", path: "/export-center/runs/{runId}/events", purpose: "Stream run events (text/event-stream)" }
  ];

  function cell(text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    return td;
  }

  function render() {
    var body = document.querySelector("#endpoints tbody");
    if (!body) { return; }
    ENDPOINTS.forEach(function (e) {
      var tr = document.createElement("tr");
      tr.appendChild(cell(e.method, "method " + e.method.toLowerCase()));
      tr.appendChild(cell(e.path, "path"));
      tr.appendChild(cell(e.purpose));
      body.appendChild(tr);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
