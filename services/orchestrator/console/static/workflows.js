// Workflows pages, from one stream of the console's events:
// - the shown run: its steps' colours in the graph (and the run page's step table). On each
//   (re)connect the run's state is read again, so nothing between the page's render and the
//   stream's start is missed; a step's state only ever moves forward.
// - the workflow's runs table: each run's status as it changes; a new run is added on top.
"use strict";
(function () {
  const view = document.getElementById("run-view");
  if (!view || !window.Console) return;
  const el = Console.el;
  const runId = view.dataset.runId || "";
  const workflowId = view.dataset.workflowId || "";
  const runsBody = document.querySelector("table.runs tbody");
  const RANK = {none: 0, pending: 1, running: 2, completed: 3, failed: 3, skipped: 3};
  const RUN_DONE = new Set(["completed", "failed"]);
  let finished = !runId || RUN_DONE.has(view.dataset.status || "");
  if (finished && !runsBody) return;  // nothing on this page will change

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
    if (!runId || finished) return;
    try {
      const state = await Console.getJSON(view.dataset.stateUrl);
      for (const [stepId, status] of Object.entries(state.steps || {})) setStep(stepId, status);
      setRun(state.status, state.error);
    } catch (e) { console.warn("run state", e); }
  }

  function runRow(event) {
    if (!runsBody || !workflowId || (event.data || {}).workflow_id !== workflowId) return;
    const id = event.resource_id, status = event.type === "workflow_started" ? "pending" : event.data.status;
    let row = null;
    for (const candidate of runsBody.querySelectorAll("tr[data-run-id]")) {
      if (candidate.getAttribute("data-run-id") === id) row = candidate;
    }
    if (row === null) {
      if (event.type !== "workflow_started") return;
      const runUrl = view.dataset.runsPrefix + "/" + encodeURIComponent(id);
      row = el("tr", {"data-run-id": id},
        el("td", {}, el("a", {class: "mono", href: runUrl, text: id})),
        el("td", {}, el("span", {class: "status " + status, text: status})),
        el("td", {class: "num", text: event.data.version || ""}), el("td", {class: "num"}),
        el("td", {text: Console.time(event.ts)}), el("td", {}),
        el("td", {}, el("a", {href: "?run=" + encodeURIComponent(id), text: "show on graph"})));
      runsBody.insertBefore(row, runsBody.firstChild);
      return;
    }
    const badge = row.querySelector(".status");
    if (badge && status && status !== "pending") { badge.textContent = status; badge.className = "status " + status; }
  }

  const types = (view.dataset.eventTypes || "").split(",").filter(Boolean);
  Console.stream({types: types.join(",")}, (event) => {
    const data = event.data || {};
    if (event.type === "workflow_started" || event.type === "workflow_completed" || event.type === "workflow_failed") runRow(event);
    if (event.type === "workflow_step_started" && data.workflow_id === workflowId) {
      runRow({type: "workflow_running", resource_id: event.resource_id, data: {workflow_id: workflowId, status: "running"}});
    }
    if (!runId || event.resource_id !== runId) return;
    if (event.type.startsWith("workflow_step_") && data.step_id) setStep(data.step_id, data.status);
    else if (event.type !== "workflow_started") refresh();  // the run ended: read its final state
  }, (state) => {
    const live = document.getElementById("live-state");
    if (live) { live.textContent = state; live.className = "live " + (state === "live" ? "ok" : "warn"); }
    if (state === "live") refresh();
  });
})();
