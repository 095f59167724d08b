/* The live activity page (templates/observability/activity.html).
 *
 * Rows are worded by the server (observability/activity.py): the page starts with the
 * rows embedded in it, and whenever the socket announces an event it does not show yet,
 * it asks /activity/events?after=<id - 1> for the row. After every (re)connect it asks for
 * everything newer than its oldest row, so what happened while the socket was down is
 * filled in, including an event that committed late with a lower id. Rows are keyed by
 * event id: one that arrives twice (embedded and announced, fetched twice) shows once.
 */
(function () {
  "use strict";

  var root = document.getElementById("activity");
  if (!root) return;
  var body = document.getElementById("activity-rows");
  var empty = document.getElementById("activity-empty");
  var state = document.getElementById("live-state");
  var eventsUrl = root.dataset.eventsUrl;
  var loginUrl = root.dataset.loginUrl;
  var limit = parseInt(root.dataset.limit, 10) || 50;
  var types = new Set(JSON.parse(document.getElementById("activity-types").textContent));
  var shown = new Map(); // event id → <tr>
  var live = null;

  function cell(content, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content;
    return td;
  }

  function rowFor(event) {
    var tr = document.createElement("tr");
    tr.className = "activity-row tone-" + event.tone;
    tr.dataset.eventId = String(event.id);
    tr.dataset.type = event.type;
    tr.appendChild(cell(LiveEvents.timeElement(event.created_at), "activity-time"));
    tr.appendChild(cell(event.agent || "—", "activity-agent"));
    var kind = document.createElement("span");
    kind.className = "activity-kind";
    kind.textContent = event.kind;
    tr.appendChild(cell(kind));
    var what = document.createElement("span");
    if (event.url) {
      var link = document.createElement("a");
      link.href = event.url;
      link.textContent = event.text;
      what.appendChild(link);
    } else {
      what.textContent = event.text;
    }
    if (event.next_at) {
      var next = document.createElement("span");
      next.className = "activity-next";
      next.appendChild(document.createTextNode(" · next step "));
      next.appendChild(LiveEvents.timeElement(event.next_at));
      what.appendChild(next);
    }
    tr.appendChild(cell(what, "activity-text"));
    return tr;
  }

  /* Insert rows not shown yet, newest (highest id) first; keep the newest `limit`. */
  function merge(events, fresh) {
    events.forEach(function (event) {
      if (shown.has(event.id)) return;
      var tr = rowFor(event);
      if (fresh) tr.classList.add("fresh");
      var before = null;
      for (var row = body.firstElementChild; row; row = row.nextElementSibling) {
        if (Number(row.dataset.eventId) < event.id) {
          before = row;
          break;
        }
      }
      body.insertBefore(tr, before);
      shown.set(event.id, tr);
    });
    while (shown.size > limit) {
      var last = body.lastElementChild;
      shown.delete(Number(last.dataset.eventId));
      body.removeChild(last);
    }
    empty.hidden = shown.size > 0;
  }

  function oldestShown() {
    var last = body.lastElementChild;
    return last ? Number(last.dataset.eventId) : null;
  }

  // One request at a time; announcements during a request lower the next one's floor.
  var fetching = false;
  var pendingFloor = null;

  function fetchAfter(floor) {
    if (fetching) {
      pendingFloor = pendingFloor === null ? floor : Math.min(pendingFloor, floor);
      return;
    }
    fetching = true;
    fetch(eventsUrl + "?after=" + encodeURIComponent(Math.max(0, floor)), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        if (response.status === 401) {
          signedOut();
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        if (data) merge(data.events, true);
      })
      .catch(function () {
        // the server is away: the next (re)connect asks again
      })
      .then(function () {
        fetching = false;
        if (pendingFloor !== null) {
          var next = pendingFloor;
          pendingFloor = null;
          fetchAfter(next);
        }
      });
  }

  function catchUp() {
    var oldest = oldestShown();
    fetchAfter(oldest === null ? 0 : oldest - 1);
  }

  function showState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function signedOut() {
    if (live) live.stop();
    state.dataset.state = "signed-out";
    state.textContent = "Signed out — ";
    var link = document.createElement("a");
    link.href = loginUrl + "?next=" + encodeURIComponent(window.location.pathname);
    link.textContent = "sign in again";
    state.appendChild(link);
  }

  merge(JSON.parse(document.getElementById("activity-initial").textContent), false);

  live = LiveEvents.connect({
    onEvent: function (event) {
      if (types.has(event.type) && !shown.has(event.id)) fetchAfter(event.id - 1);
    },
    onOpen: catchUp,
    onState: function (name, info) {
      if (name === "live") {
        showState("live", "Live");
      } else if (name === "connecting") {
        showState("connecting", "Connecting…");
      } else if (name === "reconnecting") {
        var seconds = Math.ceil((info.delayMs || 0) / 1000);
        showState("reconnecting", seconds ? "Disconnected — reconnecting in " + seconds + " s…" : "Reconnecting…");
        // a socket refused again and again may mean the session ended: the fetch tells
        if (info.attempt >= 3 && info.delayMs) catchUp();
      }
    },
  });
})();
