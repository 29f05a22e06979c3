// Services page: live status and the chosen service's log tail from one server-sent-events
// stream (/console/services/live), and start/stop/restart buttons (POST with the CSRF token).
"use strict";
(function () {
  const root = document.getElementById("services");
  if (!root || !window.Console) return;
  const el = Console.el;
  const MAX_LINES = 500;
  const logPane = document.getElementById("log-tail");
  const logState = document.getElementById("log-state");
  const service = root.dataset.service;
  const endpoint = root.dataset.endpoint;

  function mib(bytes) { return bytes === null || bytes === undefined ? "" : (bytes / 1048576).toFixed(1) + " MiB"; }
  function cpu(value) { return value === null || value === undefined ? "" : value.toFixed(1) + " %"; }

  function row(ep, s) {
    const buttons = ["start", "stop", "restart"].map((action) => el("button", {
      type: "button", class: action === "stop" ? "danger" : "secondary", "data-action": action,
      "data-endpoint": ep.index, "data-name": s.name, text: action[0].toUpperCase() + action.slice(1)}));
    const link = el("a", {href: "?endpoint=" + ep.index + "&service=" + encodeURIComponent(s.name), text: s.name});
    return el("tr", {"data-service": s.name, "data-state": s.state,
                     class: String(ep.index) === endpoint && s.name === service ? "tailed" : null},
      el("td", {class: "name"}, link),
      el("td", {}, el("span", {class: "svc-state " + s.state, text: s.state})),
      el("td", {class: "health", title: s.health_detail, text: s.health}),
      el("td", {class: "ports mono", text: (s.ports || []).join(", ")}),
      el("td", {class: "num cpu", text: cpu(s.cpu_percent)}),
      el("td", {class: "num mem", text: mib(s.memory_bytes)}),
      el("td", {class: "mono container", text: s.container_id}),
      el("td", {class: "started", text: Console.time(s.started_at)}),
      el("td", {class: "buttons"}, buttons));
  }

  function showStatus(endpoints) {
    for (const ep of endpoints) {
      const section = root.querySelector('section.endpoint[data-endpoint="' + ep.index + '"]');
      if (!section) continue;
      const badge = section.querySelector(".endpoint-state");
      badge.textContent = ep.state; badge.className = "endpoint-state " + ep.state;
      section.querySelector(".endpoint-error").textContent = ep.error;
      section.querySelector("tbody").replaceChildren(...ep.services.map((s) => row(ep, s)));
    }
  }

  function addLine(line) {
    if (!logPane) return;
    logPane.appendChild(el("span", {class: line.stream === "stderr" ? "stderr" : null, text: line.message + "\n"}));
    while (logPane.childNodes.length > MAX_LINES) logPane.removeChild(logPane.firstChild);
    logPane.scrollTop = logPane.scrollHeight;
  }

  function say(text, ok) {
    const node = document.getElementById("action-result");
    node.hidden = false; node.textContent = text; node.className = "flash " + (ok ? "ok" : "error");
  }

  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const {action, name} = button.dataset;
    if (action === "stop" && !window.confirm("Stop " + name + " (and what depends on it)?")) return;
    for (const b of root.querySelectorAll("button[data-action]")) b.disabled = true;
    say(action + " " + name + "…", true);
    try {
      const answer = await Console.post(root.dataset.actionUrl + "/" + encodeURIComponent(button.dataset.endpoint) + "/" + encodeURIComponent(name) + "/" + action, {});
      say(answer.message || (action + " done"), answer.success);
    } catch (e) {
      say(action + " " + name + ": " + e.message, false);
    } finally {
      for (const b of root.querySelectorAll("button[data-action]")) b.disabled = false;
    }
  });

  const params = new URLSearchParams({endpoint: endpoint});
  if (service) params.set("service", service);
  const source = new EventSource(root.dataset.liveUrl + "?" + params);
  const json = (message) => { try { return JSON.parse(message.data); } catch (e) { return null; } };
  source.addEventListener("status", (m) => {
    const d = json(m);
    if (!d) return;
    showStatus(d.endpoints);
    const mine = d.endpoints.find((ep) => String(ep.index) === endpoint);
    // No service chosen: tail the first one (the page was drawn before the stack answered).
    if (!service && mine && mine.services.length) {
      window.location.replace("?endpoint=" + endpoint + "&service=" + encodeURIComponent(mine.services[0].name));
    }
  });
  source.addEventListener("log_start", () => { if (logPane) logPane.replaceChildren(); if (logState) logState.textContent = "following"; });
  source.addEventListener("log", (m) => { const d = json(m); if (d) addLine(d); });
  source.addEventListener("log_end", (m) => { const d = json(m); if (logState && d) logState.textContent = "ended: " + d.reason; });
  source.addEventListener("open", () => { const live = document.getElementById("live-state"); if (live) { live.textContent = "live"; live.className = "live ok"; } });
  source.addEventListener("error", () => { const live = document.getElementById("live-state"); if (live) { live.textContent = "reconnecting"; live.className = "live warn"; } });
})();
