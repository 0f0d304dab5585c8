// sand-boxer status page: TTL countdowns, and a refresh of <main> on every
// change the daemon announces on /ui/live (server-sent events). Ours, no
// dependencies; the page works without it (reload by hand).
(function () {
  "use strict";
  function span(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
        m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + sec + "s";
    return sec + "s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var left = (Date.parse(el.getAttribute("data-expires")) - now) / 1000;
      el.textContent = span(left);
    });
  }
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        // The session ended: the login form, as a page of its own.
        if (r.redirected) { window.location.assign(r.url); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main"), old = document.querySelector("main");
        if (fresh && old) {
          old.replaceWith(fresh);
          tick();
          document.body.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  function connect() {
    var status = document.getElementById("live-status");
    var es = new EventSource("/ui/live");
    es.addEventListener("change", refresh);
    es.onopen = function () {
      if (status) status.className = "live-status on";
      document.body.setAttribute("data-live", "on");
    };
    es.onerror = function () {
      if (status) status.className = "live-status off";
      document.body.setAttribute("data-live", "off");
      // Closed for good (the session ended: 401): a reload goes to the login.
      if (es.readyState === EventSource.CLOSED) refresh();
    };
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    if (!document.body.classList.contains("login")) connect();
  });
})();
