/* The events WebSocket (/ws/events/, agents/consumers.py) for the admin's live pages:
 * reconnects with backoff after a dropped socket, pings to notice a dead one, and tells
 * the page its state. Pages fetch what they missed in onOpen (called on every open).
 *
 *   LiveEvents.connect({onEvent(event), onOpen(isReconnect), onState(state, info)})
 *
 * state: "connecting", "live", "reconnecting" (info.delayMs, info.attempt), "stopped".
 */
(function () {
  "use strict";

  var SOCKET_PATH = "/ws/events/";
  var FIRST_RETRY_MS = 500;
  var MAX_RETRY_MS = 15000;
  var PING_EVERY_MS = 25000; // proxies close sockets idle for a minute or so
  var PONG_WITHIN_MS = 10000;

  function socketUrl(path) {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + path;
  }

  function connect(options) {
    var onEvent = options.onEvent || function () {};
    var onOpen = options.onOpen || function () {};
    var onState = options.onState || function () {};
    var socket = null;
    var failures = 0; // closes since the last successful open
    var opened = false; // opened at least once: the next open is a reconnect
    var stopped = false;
    var retryTimer = null;
    var pingTimer = null;
    var pongTimer = null;

    function stopHeartbeat() {
      clearInterval(pingTimer);
      clearTimeout(pongTimer);
      pingTimer = pongTimer = null;
    }

    function startHeartbeat(ws) {
      pingTimer = setInterval(function () {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.send(JSON.stringify({ type: "ping" }));
        clearTimeout(pongTimer);
        // no pong: the connection is dead without a close (a sleeping laptop, a proxy)
        pongTimer = setTimeout(function () { ws.close(); }, PONG_WITHIN_MS);
      }, PING_EVERY_MS);
    }

    function open() {
      retryTimer = null;
      if (stopped) return;
      onState(opened ? "reconnecting" : "connecting", { attempt: failures, delayMs: 0 });
      var ws = new WebSocket(socketUrl(options.path || SOCKET_PATH));
      socket = ws;
      ws.onopen = function () {
        var isReconnect = opened;
        opened = true;
        failures = 0;
        onState("live", {});
        startHeartbeat(ws);
        onOpen(isReconnect);
      };
      ws.onmessage = function (message) {
        var data;
        try {
          data = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        if (data && data.type === "pong") {
          clearTimeout(pongTimer);
        } else if (data && typeof data.id === "number") {
          onEvent(data);
        }
      };
      ws.onclose = function () {
        stopHeartbeat();
        if (ws !== socket || stopped) return;
        socket = null;
        var delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * Math.pow(2, failures));
        delay = Math.round(delay * (0.8 + Math.random() * 0.4)); // not every page at once
        failures += 1;
        onState("reconnecting", { attempt: failures, delayMs: delay });
        retryTimer = setTimeout(open, delay);
      };
    }

    function retryNow() {
      if (retryTimer !== null) {
        clearTimeout(retryTimer);
        open();
      }
    }

    // back online, or the tab shown again: do not wait out the backoff
    window.addEventListener("online", retryNow);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") retryNow();
    });

    open();
    return {
      stop: function () {
        stopped = true;
        clearTimeout(retryTimer);
        stopHeartbeat();
        if (socket) socket.close();
        onState("stopped", {});
      },
    };
  }

  var sameDay = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  var otherDay = new Intl.DateTimeFormat(undefined, {
    day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  var full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

  /* A <time> element for an ISO timestamp, in the reader's time zone. */
  function timeElement(iso) {
    var element = document.createElement("time");
    setTime(element, iso);
    return element;
  }

  function setTime(element, iso) {
    var date = new Date(iso);
    element.dateTime = iso;
    if (isNaN(date.getTime())) {
      element.textContent = iso;
      return;
    }
    var today = new Date().toDateString() === date.toDateString();
    element.textContent = (today ? sameDay : otherDay).format(date);
    element.title = full.format(date);
  }

  window.LiveEvents = { connect: connect, timeElement: timeElement, setTime: setTime };
})();
