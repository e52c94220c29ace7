// The pool page's "live" mark follows its websocket: htmx's ws extension reconnects by
// itself (and the consumer then sends the whole current state), this only says so.
(function () {
  function mark(open) {
    document.querySelectorAll(".live-dot").forEach(function (dot) {
      dot.classList.toggle("offline", !open);
      dot.textContent = open ? "live" : "reconnecting…";
      dot.title = open ? "updates live: no need to reload" : "the live connection dropped; reconnecting";
    });
  }
  document.addEventListener("htmx:wsOpen", function () { mark(true); });
  document.addEventListener("htmx:wsClose", function () { mark(false); });
})();
