// flowdsl run browser: filters submit on change; while a page shows a run in progress, poll
// its main content (the server renders it, X-Flowdsl-Partial) and swap it in when it changes.
(function () {
  "use strict";
  document.querySelectorAll("form.filters select").forEach(function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });
  var main = document.getElementById("content");
  if (!main || main.dataset.live !== "1") return;
  var last = null;
  var delay = 1000;
  function swap(html) {
    // keep open <details> open and the scroll position of the graph across the swap
    var open = Array.prototype.map.call(main.querySelectorAll("details[open]"), function (d) {
      var row = d.closest("[id]"); return row ? row.id : null;
    });
    main.innerHTML = html;
    open.forEach(function (id) {
      var row = id && document.getElementById(id);
      var d = row && row.querySelector("details");
      if (d) d.open = true;
    });
  }
  function tick() {
    fetch(window.location.href, { headers: { "X-Flowdsl-Partial": "1" }, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status);
        var live = r.headers.get("X-Flowdsl-Live") === "1";
        return r.text().then(function (text) {
          if (text !== last) { swap(text); last = text; }
          main.dataset.live = live ? "1" : "0";
          if (live) setTimeout(tick, delay);
        });
      })
      .catch(function () { setTimeout(tick, Math.min(delay * 3, 5000)); });
  }
  setTimeout(tick, delay);
})();
