/* Live integration health in the admin (integrations/admin.py: the list's "health"
 * column, the change page's "Health" fieldset).
 *
 * Each part of a badge names its integration (data-integration-health-status/-detail/
 * -since="<id>"). When the events socket announces an integration.status event for one on
 * the page, the page asks the admin for that integration's health now and redraws it;
 * on every (re)connect it asks for all of them, since changes may have been missed.
 */
function startIntegrationHealth() {
  "use strict";

  var badges = document.querySelectorAll("[data-integration-health-status]");
  if (!badges.length || !window.LiveEvents) return;
  var healthUrl = badges[0].dataset.healthUrl;
  var onPage = new Set();
  badges.forEach(function (badge) { onPage.add(Number(badge.dataset.integrationHealthStatus)); });

  // server-rendered times, shown in the reader's time zone like the live ones
  document.querySelectorAll("time[data-integration-health-since]").forEach(function (element) {
    if (element.getAttribute("datetime")) LiveEvents.setTime(element, element.getAttribute("datetime"));
  });

  function each(attribute, id, callback) {
    document.querySelectorAll("[" + attribute + '="' + id + '"]').forEach(callback);
  }

  function flash(element) {
    element.classList.remove("fresh");
    void element.offsetWidth; // restart the animation
    element.classList.add("fresh");
  }

  function draw(health) {
    each("data-integration-health-status", health.id, function (badge) {
      var changed = badge.dataset.status !== health.status || badge.textContent !== health.label;
      badge.className = "health-badge health-" + health.status;
      badge.dataset.status = health.status;
      badge.textContent = health.label;
      if (changed) flash(badge);
    });
    each("data-integration-health-detail", health.id, function (detail) {
      detail.textContent = health.detail || detail.dataset.empty || "";
    });
    each("data-integration-health-since-label", health.id, function (label) {
      label.hidden = !health.changed_at;
    });
    each("data-integration-health-since", health.id, function (since) {
      if (health.changed_at) {
        LiveEvents.setTime(since, health.changed_at);
      } else {
        since.removeAttribute("datetime");
        since.textContent = "—";
      }
    });
  }

  function refresh(ids) {
    if (!ids.length) return;
    var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
    fetch(healthUrl + "?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) { data.integrations.forEach(draw); })
      .catch(function () {
        // signed out or the server is away: the next reconnect asks again
      });
  }

  LiveEvents.connect({
    onEvent: function (event) {
      var id = event.type === "integration.status" && event.payload ? event.payload.integration_id : null;
      if (onPage.has(id)) refresh([id]);
    },
    onOpen: function () {
      refresh(Array.from(onPage)); // what changed since the page was drawn, or while away
    },
    onState: function (state) {
      badges.forEach(function (badge) { badge.dataset.live = state; });
    },
  });
}

// the admin puts its media scripts in <head>: wait for the badges
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", startIntegrationHealth);
} else {
  startIntegrationHealth();
}
