// The pool page's "live" mark follows its websocket: htmx's ws extension reconnects by
// itself (and the consumer then sends the whole current state), this only says so.
(function () {
  function mark(open, stopped) {
    document.querySelectorAll(".live-dot").forEach(function (dot) {
      dot.classList.toggle("offline", !open);
      dot.textContent = open ? "live" : stopped ? "stopped" : "reconnecting…";
      dot.title = open ? "updates live: no need to reload"
        : stopped ? "the server ended the live connection (the page says why)"
        : "the live connection dropped; reconnecting";
    });
  }
  document.addEventListener("htmx:wsOpen", function () { mark(true, false); });
  // 4000-4999: closed by the server on purpose, no reconnect (static/js/live.js says why).
  document.addEventListener("htmx:wsClose", function (evt) {
    var e = evt.detail && evt.detail.event;
    mark(false, Boolean(e && e.code >= 4000 && e.code <= 4999));
  });
})();
