// jobrunner dashboard: live updates and background actions. The pages work
// without this file; it only makes them follow the event stream and post forms
// without leaving the page. No framework, no build step.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var notice = document.getElementById("notice");
  var pending = null;
  var last = 0;
  // At most one re-render a second, however many events arrive.
  var MIN_GAP = 1000;

  function refresh() {
    pending = null;
    last = Date.now();
    fetch(location.href, { headers: { "X-Partial": "1", "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var focused = document.activeElement && live.contains(document.activeElement)
          ? document.activeElement.getAttribute("action") || document.activeElement.id : null;
        live.innerHTML = html;
        live.dataset.refreshed = String(Number(live.dataset.refreshed || 0) + 1);
        if (focused) {
          var again = document.getElementById(focused);
          if (again) again.focus();
        }
      })
      .catch(function () {});
  }

  function schedule() {
    if (pending) return;
    pending = setTimeout(refresh, Math.max(0, MIN_GAP - (Date.now() - last)));
  }

  function say(text, ok) {
    notice.textContent = text;
    notice.className = ok ? "ok" : "error";
  }

  if (live && live.dataset.events !== undefined && window.EventSource) {
    var query = live.dataset.events;
    var source = new EventSource("/events" + (query ? "?" + query : ""));
    ["status", "progress", "lagged"].forEach(function (name) {
      source.addEventListener(name, schedule);
    });
    source.onopen = function () { live.dataset.stream = "open"; };
    source.onerror = function () { live.dataset.stream = "reconnecting"; };
  }

  // Action forms post in the background; the answer is announced and the live
  // part re-rendered. Bulk actions ask first.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if ((form.getAttribute("method") || "").toLowerCase() !== "post") return;
    var action = form.getAttribute("action");
    if (action === "/login" || action === "/logout") return;
    event.preventDefault();
    var question = form.dataset.confirm;
    if (question && !window.confirm(question)) return;
    var body = new URLSearchParams(new FormData(form));
    if (question) body.set("confirmed", "yes");
    fetch(action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    })
      .then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, j: j }; },
          function () { return { ok: r.ok, j: { error: "HTTP " + r.status } }; });
      })
      .then(function (res) {
        say(res.ok ? res.j.message : res.j.error, res.ok);
        refresh();
      })
      .catch(function () { say("The daemon did not answer.", false); });
  });
})();
