// chainmail console: progressive enhancement only. Every page works
// without this file; with it, the dashboard refreshes itself, the first
// field with an error takes the focus, and buttons marked data-confirm ask
// before submitting.
(function () {
  "use strict";

  // Focus the first field in error, or the error summary, so keyboard and
  // screen-reader users land on what needs fixing.
  function focusFirstError() {
    var field = document.querySelector(".field.has-error input, .field.has-error select, .field.has-error textarea");
    if (field) {
      field.focus();
      return;
    }
    var summary = document.querySelector(".error-summary");
    if (summary) {
      summary.setAttribute("tabindex", "-1");
      summary.focus();
    }
  }

  // Regions marked data-live are replaced by the same regions of a fresh
  // copy of the page, every few seconds while the tab is visible.
  function liveRefresh() {
    if (!document.body.hasAttribute("data-live-page")) {
      return;
    }
    var busy = false;
    var timer = setInterval(function () {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      fetch(location.href, { credentials: "same-origin", redirect: "manual", headers: { "X-Console-Refresh": "1" } })
        .then(function (resp) {
          if (resp.type === "opaqueredirect" || !resp.ok) {
            // Logged out or the node is gone: stop, keep what is shown.
            clearInterval(timer);
            return null;
          }
          return resp.text();
        })
        .then(function (html) {
          if (!html) {
            return;
          }
          var doc = new DOMParser().parseFromString(html, "text/html");
          document.querySelectorAll("[data-live]").forEach(function (el) {
            var fresh = el.id && doc.getElementById(el.id);
            if (fresh && !el.contains(document.activeElement)) {
              el.replaceWith(document.importNode(fresh, true));
            }
          });
        })
        .catch(function () {})
        .finally(function () {
          busy = false;
        });
    }, 5000);
  }

  // A submit button with data-confirm asks first (the server still has its
  // own confirmation step where it matters: purge and delete).
  function confirmButtons() {
    document.addEventListener("click", function (ev) {
      var b = ev.target.closest("button[data-confirm]");
      if (b && !window.confirm(b.getAttribute("data-confirm"))) {
        ev.preventDefault();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    focusFirstError();
    liveRefresh();
    confirmButtons();
  });
})();
