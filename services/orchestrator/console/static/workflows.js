// Workflows pages: colour the graph's steps (and the run page's step table) from the console's
// event stream. On each (re)connect the run's state is read again, so nothing between the page's
// render and the stream's start is missed; a step's state only ever moves forward.
"use strict";
(function () {
  const view = document.getElementById("run-view");
  if (!view || !view.dataset.runId || !window.Console) return;
  const runId = view.dataset.runId;
  const RANK = {none: 0, pending: 1, running: 2, completed: 3, failed: 3, skipped: 3};
  const RUN_DONE = new Set(["completed", "failed"]);
  let finished = RUN_DONE.has(view.dataset.status || "");
  if (finished) return;  // nothing will change

  function setStep(stepId, status) {
    for (const node of document.querySelectorAll("#workflow-graph .node")) {
      if (node.getAttribute("data-node-id") !== stepId) continue;
      const old = node.getAttribute("data-status") || "none";
      if ((RANK[status] || 0) < (RANK[old] || 0) || old === status) return;
      node.setAttribute("data-status", status);
      node.setAttribute("class", "node status-" + status);
      const text = node.querySelector(".state-text");
      if (text) text.textContent = status;
    }
    for (const row of document.querySelectorAll("tr[data-step-id]")) {
      if (row.getAttribute("data-step-id") !== stepId) continue;
      const badge = row.querySelector(".step-status");
      if (badge) { badge.textContent = status; badge.className = "status " + status + " step-status"; }
    }
  }

  function setRun(status, error) {
    const badge = document.getElementById("run-status");
    if (badge) { badge.textContent = status; badge.className = "status " + status; }
    const err = document.getElementById("run-error");
    if (err && error !== undefined) err.textContent = error;
    view.dataset.status = status;
    if (RUN_DONE.has(status) && !finished) {
      finished = true;
      // The run page shows timings and results: read them once the run is over.
      if (view.dataset.reloadWhenDone) setTimeout(() => window.location.reload(), 300);
    }
  }

  async function refresh() {
    try {
      const state = await Console.getJSON(view.dataset.stateUrl);
      for (const [stepId, status] of Object.entries(state.steps || {})) setStep(stepId, status);
      setRun(state.status, state.error);
    } catch (e) { console.warn("run state", e); }
  }

  const types = (view.dataset.eventTypes || "").split(",").filter(Boolean);
  Console.stream({types: types.join(",")}, (event) => {
    if (event.resource_id !== runId) return;
    const data = event.data || {};
    if (event.type.startsWith("workflow_step_") && data.step_id) setStep(data.step_id, data.status);
    else refresh();  // the run ended: read its final state (skipped steps included)
  }, (state) => {
    const live = document.getElementById("live-state");
    if (live) { live.textContent = state; live.className = "live " + (state === "live" ? "ok" : "warn"); }
    if (state === "live") refresh();
  });
})();
