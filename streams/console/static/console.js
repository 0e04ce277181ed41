// The console's live refresh: when the server commits decisions or rejected input, fetch the page's sections again (rendered
// and escaped by the server) and swap them in. No inline script, no markup built from data here.
"use strict";
(function () {
  const PARTS = ["tiers", "log", "overrides", "rejected", "activations"];
  const live = document.getElementById("live");
  let queued = false;
  let opened = false;

  function mark(text, state) {
    if (live) {
      live.textContent = text;
      live.className = state;
    }
  }

  async function swap(part) {
    const section = document.getElementById(part);
    if (!section) return true;
    const response = await fetch("/console/parts/" + part + window.location.search, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    if (response.status === 401) {
      window.location.assign("/console/sign-in");
      return false;
    }
    if (!response.ok) return false;
    const parsed = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = parsed.getElementById(part);
    if (fresh) section.replaceWith(document.importNode(fresh, true));
    return true;
  }

  async function refresh() {
    queued = false;
    for (const part of PARTS) {
      if (!(await swap(part))) return;
    }
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || "0") + 1);
  }

  function soon() {
    if (!queued) {
      queued = true;
      window.setTimeout(refresh, 150);
    }
  }

  // The count of changes the page was rendered after: the stream says `changed` at once if there were
  // more by the time it listens, so a change between the render and the subscription is not missed.
  const rendered = document.currentScript ? document.currentScript.dataset.changes : undefined;
  const source = new EventSource("/console/stream" + (rendered ? "?since=" + encodeURIComponent(rendered) : ""));
  source.addEventListener("ready", function () {
    mark("live", "live");
    if (opened) soon(); // reconnected: changes may have been missed
    opened = true;
  });
  source.addEventListener("changed", soon);
  source.addEventListener("error", function () {
    mark("reconnecting…", "stale");
  });
})();
