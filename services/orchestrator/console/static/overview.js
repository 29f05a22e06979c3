// Overview: counts and chart re-read on task events (pushed by the server), health every 10 s.
"use strict";
(function () {
  const C = window.Console, el = C.el;
  const STATES = ["pending", "running", "completed", "failed", "cancelled"];

  function renderCounts(data) {
    const body = document.querySelector("#counts tbody");
    const rows = Object.keys(data.classes).sort().map((name) =>
      el("tr", {"data-class": name},
        el("td", {}, el("a", {href: C.prefix + "/tasks?class=" + encodeURIComponent(name), text: name})),
        STATES.map((s) => el("td", {class: "num", "data-status": s},
          el("a", {href: C.prefix + "/tasks?class=" + encodeURIComponent(name) + "&status=" + s,
            text: data.classes[name][s]})))));
    body.replaceChildren(...rows);
    for (const s of STATES) {
      const cell = document.querySelector('#counts tfoot [data-status="' + s + '"]');
      if (cell) cell.textContent = data.totals[s];
    }
  }

  function renderChart(series) {
    const svg = document.getElementById("chart");
    const W = 600, H = 120, top = 10, bottom = 16, plot = H - top - bottom;
    const slot = W / series.length;
    const maxCount = Math.max(1, ...series.map((b) => b.completed + b.failed + b.cancelled));
    const maxRun = Math.max(0.001, ...series.map((b) => b.run_seconds));
    const nodes = [];
    const points = [];
    series.forEach((b, i) => {
      const total = b.completed + b.failed + b.cancelled;
      const h = plot * total / maxCount, hf = plot * b.failed / maxCount;
      const x = i * slot + 2;
      nodes.push(el("svg:rect", {class: "bar", x: x, y: top + plot - h, width: slot - 4, height: h},
        el("svg:title", {text: total + " finished, " + b.failed + " failed, mean run " + C.duration(b.run_seconds)})));
      if (hf > 0) nodes.push(el("svg:rect", {x: x, y: top + plot - hf, width: slot - 4, height: hf, fill: "#c53030"}));
      if (b.run_seconds > 0) points.push((x + (slot - 4) / 2).toFixed(1) + "," + (top + plot - plot * b.run_seconds / maxRun).toFixed(1));
    });
    if (points.length > 1) nodes.push(el("svg:polyline", {class: "line", points: points.join(" ")}));
    nodes.push(el("svg:text", {x: 2, y: H - 3, text: "-" + series.length + " min"}));
    nodes.push(el("svg:text", {x: W - 30, y: H - 3, text: "now"}));
    nodes.push(el("svg:text", {x: 2, y: 9, text: "max " + maxCount + "/min, run " + C.duration(maxRun)}));
    svg.replaceChildren(...nodes);
  }

  function renderFailures(failures) {
    const body = document.querySelector("#failures tbody");
    if (!failures.length) {
      body.replaceChildren(el("tr", {}, el("td", {colspan: 4, class: "muted", text: "No failed task."})));
      return;
    }
    body.replaceChildren(...failures.map((f) => el("tr", {},
      el("td", {}, el("a", {class: "mono", href: C.prefix + "/tasks/" + encodeURIComponent(f.id), text: f.id})),
      el("td", {text: f.class}), el("td", {text: C.time(f.finished_at)}),
      el("td", {class: "error", text: f.error}))));
  }

  async function refresh() {
    try {
      const data = await C.getJSON(C.prefix + "/api/overview");
      renderCounts(data); renderChart(data.series); renderFailures(data.failures);
    } catch (e) { console.warn("overview refresh", e); }
  }

  async function health() {
    try {
      const data = await C.getJSON(C.prefix + "/api/health");
      const body = document.querySelector("#health tbody");
      body.replaceChildren(...data.dependencies.map((d) => el("tr", {},
        el("td", {text: d.name}),
        el("td", {class: d.serving ? "health-ok" : "health-bad", text: d.state}))));
    } catch (e) { console.warn("health", e); }
  }

  const initial = JSON.parse(document.getElementById("overview-data").textContent);
  renderChart(initial.series);
  health();
  setInterval(health, 10000);
  const later = C.throttle(refresh, 500);
  C.subscribe(["task_submitted", "task_started", "task_retrying", "task_completed",
    "task_failed", "task_cancelled"], later);
  // The chart's minutes move on even when nothing happens.
  setInterval(refresh, 60000);
})();
