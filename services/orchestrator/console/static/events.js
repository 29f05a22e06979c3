// Events: one stream of its own (type filter, replay from a time), newest on top.
"use strict";
(function () {
  const C = window.Console, el = C.el;
  const MAX_ROWS = 1000;
  const body = document.querySelector("#events tbody");
  const state = document.getElementById("tail-state");
  const form = document.getElementById("event-filters");
  const sinceInput = document.getElementById("since");
  let source = null, paused = false, held = [], received = 0;

  function row(event) {
    const resource = event.type.startsWith("task_")
      ? el("a", {class: "mono", href: C.prefix + "/tasks/" + encodeURIComponent(event.resource_id), text: event.resource_id})
      : el("span", {class: "mono", text: event.resource_id});
    const data = Object.entries(event.data || {}).map(([k, v]) => k + "=" + v).join(" ");
    return el("tr", {"data-seq": event.seq}, el("td", {class: "num", text: event.seq}),
      el("td", {text: C.time(event.ts)}), el("td", {text: event.type}), el("td", {}, resource),
      el("td", {class: "mono", text: data}));
  }

  function show(event) {
    received += 1;
    if (paused) { held.push(event); return; }
    body.insertBefore(row(event), body.firstChild);
    while (body.childElementCount > MAX_ROWS) body.removeChild(body.lastChild);
    state.textContent = received + " received, last seq " + event.seq;
  }

  function start() {
    if (source) source.close();
    body.replaceChildren();
    received = 0;
    const types = [...form.querySelectorAll('input[name="types"]:checked')].map((i) => i.value);
    const query = {};
    if (types.length) query.types = types.join(",");
    if (sinceInput.value) query.since = String(new Date(sinceInput.value).getTime() / 1000);
    const url = new URL(window.location.href);
    url.search = new URLSearchParams(query).toString();
    window.history.replaceState(null, "", url);
    source = C.stream(query, show, (s) => {
      state.textContent = s + (received ? ", " + received + " received" : "");
      C.setLive(s, s === "live" ? "ok" : "warn");
    });
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); start(); });
  document.getElementById("pause").addEventListener("click", (event) => {
    paused = !paused;
    event.target.textContent = paused ? "Resume" : "Pause";
    if (!paused) { const pending = held; held = []; received -= pending.length; pending.forEach(show); }
  });
  const since = Number(state.dataset.since);
  if (since > 0) {
    const local = new Date(since * 1000 - new Date().getTimezoneOffset() * 60000);
    sinceInput.value = local.toISOString().slice(0, 19);
  }
  start();
})();
