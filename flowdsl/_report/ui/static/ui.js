// flowdsl run browser: filters submit on change; while a page can still change (a run in
// progress, the first page of runs), poll its main content (the server renders it,
// X-Flowdsl-Partial) and swap it in when it changed, keeping open or closed what the reader
// opened or closed, and following the tail of a running task's log.
(function () {
  "use strict";
  document.addEventListener("change", function (e) {
    var s = e.target;
    if (s.matches && s.matches("form.filters select")) s.form.submit();
  });
  // a link to a task inside a collapsed group (a map's child) opens the group first
  function reveal() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (!el) return;
    for (var d = el.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    el.scrollIntoView({ block: "center" });
  }
  window.addEventListener("hashchange", reveal);
  reveal();
  var main = document.getElementById("content");
  var notice = document.getElementById("notice");
  function follow() {
    main.querySelectorAll("pre.tail").forEach(function (pre) { pre.scrollTop = pre.scrollHeight; });
  }
  follow();
  if (!main || main.dataset.live !== "1") return;
  var last = null;
  var delay = 1000;
  function key(d, n) {
    var owner = d.parentElement && d.parentElement.closest("[id]");
    return (owner ? owner.id : "") + "|" + (d.dataset.parent || "") + "|" + n;
  }
  function states() {
    var out = {};
    main.querySelectorAll("details").forEach(function (d, n) { out[key(d, n)] = d.open; });
    return out;
  }
  function swap(html) {
    var before = states();
    var tails = {};  // a tail scrolled up by the reader stays where it is
    main.querySelectorAll("pre.tail").forEach(function (pre) {
      var row = pre.closest("[id]");
      if (row) tails[row.id] = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    });
    main.innerHTML = html;
    main.querySelectorAll("details").forEach(function (d, n) {
      var k = key(d, n);
      if (k in before) d.open = before[k];
    });
    main.querySelectorAll("pre.tail").forEach(function (pre) {
      var row = pre.closest("[id]");
      if (!row || tails[row.id] !== false) pre.scrollTop = pre.scrollHeight;
    });
  }
  function problem(text) {
    if (!notice) return;
    if (!text) { notice.hidden = true; return; }
    notice.textContent = "Not updated: " + text;
    notice.hidden = false;
  }
  function tick() {
    fetch(window.location.href, { headers: { "X-Flowdsl-Partial": "1" }, cache: "no-store" })
      .then(function (r) {
        return r.text().then(function (text) {
          if (!r.ok) {
            var t = document.createElement("template");
            t.innerHTML = text;
            var p = t.content.querySelector("#problem");
            throw new Error(p ? p.textContent : "HTTP " + r.status);
          }
          problem(null);
          var live = r.headers.get("X-Flowdsl-Live") === "1";
          if (text !== last) { swap(text); last = text; }
          main.dataset.live = live ? "1" : "0";
          if (live) setTimeout(tick, delay);
        });
      })
      .catch(function (e) {
        problem(e && e.message ? e.message : "the server did not answer");
        setTimeout(tick, Math.min(delay * 3, 5000));
      });
  }
  setTimeout(tick, delay);
})();
