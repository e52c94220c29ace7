/* Every live page (htmx's ws extension): when the server ends the socket on purpose, with an
 * application close code (iacplatform/live.py `Close`: 4403 access lost, 4429 too many live
 * pages of one user, ...), the ws extension does not reconnect (it does only after a drop);
 * this says so at the top of the live part of the page. The words come from the code: Daphne
 * does not pass the server's close reason on to the browser (the reason is used when a
 * server does). Set as text, never as markup. */
(function () {
  "use strict";
  var BY_CODE = {
    4400: "the page asked for something the server cannot give: reload",
    4401: "you are logged out: log in again, then reload",
    4403: "you no longer have access to this page",
    4429: "too many live pages are open for your account: close some tabs, then reload"
  };

  document.addEventListener("htmx:wsClose", function (evt) {
    var e = evt.detail && evt.detail.event;
    if (!e || e.code < 4000 || e.code > 4999) { return; }
    var root = evt.target instanceof Element ? evt.target : document.getElementById("content");
    var note = root.querySelector(":scope > .live-closed");
    if (!note) {
      note = document.createElement("p");
      note.className = "live-closed";
      note.setAttribute("role", "alert");
      root.prepend(note);
    }
    note.setAttribute("data-code", String(e.code));
    note.textContent = "Live updates stopped: " + (e.reason || BY_CODE[e.code] || "closed by the server") + ".";
  });
})();
