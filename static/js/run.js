/* The run page's live log (tasks_app/consumers.py RunPageConsumer, over htmx's ws extension).
 *
 * - Reconnect without gaps or duplicates: every log piece carries the byte offset after it
 *   (`data-end`); a reconnect asks the server for what follows the last piece on the page.
 * - Follow the tail: when the reader is at the bottom of the log, it stays there.
 * - Bounded: the page keeps at most MAX_CHARS of log; the download link has the whole. */
(function () {
  "use strict";
  var MAX_CHARS = 512 * 1024;

  function logElement() { return document.getElementById("run-log"); }

  function currentOffset() {
    var log = logElement();
    if (!log) { return null; }
    var last = log.querySelector(".log-chunk:last-child");
    return last ? last.getAttribute("data-end") : log.getAttribute("data-offset");
  }

  // The ws extension reconnects to the URL it first read from ws-connect: point it at the
  // offset the page has now.
  htmx.createWebSocket = function (url) {
    var offset = currentOffset();
    if (offset !== null) {
      var u = new URL(url, window.location.href);
      u.searchParams.set("offset", offset);
      url = u.toString();
    }
    var sock = new WebSocket(url, []);
    sock.binaryType = htmx.config.wsBinaryType;
    return sock;
  };

  var following = true;

  document.addEventListener("htmx:wsBeforeMessage", function () {
    var log = logElement();
    if (log) { following = log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
  });

  // Fragments rendered for the websocket have no request, so their forms come without
  // Django's CSRF field: give them the page's token (the one base.html puts in hx-headers).
  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"]; }
    catch (e) { return null; }
  }
  function addCsrfFields() {
    var token = csrfToken();
    if (!token) { return; }
    document.querySelectorAll("form").forEach(function (form) {
      if ((form.getAttribute("method") || "").toLowerCase() !== "post") { return; }
      var field = form.querySelector("input[name=csrfmiddlewaretoken]");
      if (!field) {
        field = document.createElement("input");
        field.type = "hidden";
        field.name = "csrfmiddlewaretoken";
        form.prepend(field);
      }
      if (!field.value) { field.value = token; }
    });
  }

  document.addEventListener("htmx:wsAfterMessage", function () {
    addCsrfFields();
    var log = logElement();
    if (!log) { return; }
    var trimmed = false;
    while (log.textContent.length > MAX_CHARS && log.children.length > 1) {
      log.removeChild(log.firstElementChild);
      trimmed = true;
    }
    if (trimmed) { log.classList.add("trimmed"); }
    if (following) { log.scrollTop = log.scrollHeight; }
  });

  function setLive(text, cls) {
    var el = document.querySelector(".live-indicator");
    if (el) { el.textContent = text; el.className = "live-indicator " + cls; }
  }
  document.addEventListener("htmx:wsOpen", function () { setLive("● live", "on"); });
  document.addEventListener("htmx:wsClose", function (evt) {
    var e = evt.detail && evt.detail.event;
    // 4000-4999: closed by the server on purpose, no reconnect (static/js/live.js says why).
    var stopped = e && e.code >= 4000 && e.code <= 4999;
    setLive(stopped ? "○ stopped" : "○ reconnecting…", "off");
  });

  document.addEventListener("DOMContentLoaded", function () {
    var log = logElement();
    if (log) { log.scrollTop = log.scrollHeight; }
  });
})();
