// agent-infra console: shared helpers for every page (no library, no inline script: see CSP).
// Console.el(tag, attrs, ...children): DOM built with textContent, never innerHTML.
// Console.post(url, body): POST JSON with the page's CSRF token; resolves to the parsed answer.
// Console.subscribe(types, callback): events from the one shared server-sent-events stream
//   (/console/stream); callback(event) gets {seq, type, resource_id, data, ts}.
// Console.stream(query, onEvent): a stream of its own (replay with since=TS, a type filter).
"use strict";
(function () {
  const meta = (name) => {
    const node = document.querySelector('meta[name="' + name + '"]');
    return node ? node.getAttribute("content") : "";
  };
  const prefix = meta("console-prefix") || "/console";
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const svg = tag.startsWith("svg:");
    const node = svg ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.setAttribute("class", value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": meta("csrf-token")},
      body: JSON.stringify(body || {}),
    });
    let answer = {};
    try { answer = await response.json(); } catch (e) { answer = {error: response.statusText}; }
    if (!response.ok) throw new Error(answer.error || ("HTTP " + response.status));
    return answer;
  }

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
    if (response.status === 401) { window.location.assign(prefix + "/login?next=" + encodeURIComponent(location.pathname + location.search)); }
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || ("HTTP " + response.status));
    return answer;
  }

  const EVENT_TYPES = ["task_submitted", "task_started", "task_retrying", "task_completed",
    "task_failed", "task_cancelled", "workflow_created", "workflow_started",
    "workflow_step_started", "workflow_step_completed", "workflow_step_failed",
    "workflow_step_skipped", "workflow_completed", "workflow_failed"];

  function setLive(text, cls) {
    const node = document.getElementById("live-state");
    if (node) { node.textContent = text; node.className = "live " + cls; }
  }

  // One EventSource per page: the browser resends Last-Event-ID on reconnect, so nothing is
  // missed across a dropped connection (the server replays from it).
  function stream(query, onEvent, onState) {
    const params = new URLSearchParams(query || {});
    const source = new EventSource(prefix + "/stream" + (params.toString() ? "?" + params : ""));
    const handle = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      onEvent(event);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, handle);
    source.addEventListener("open", () => onState && onState("live"));
    source.addEventListener("error", () => onState && onState(source.readyState === 2 ? "closed" : "reconnecting"));
    return source;
  }

  const listeners = [];
  let shared = null;
  function subscribe(types, callback) {
    listeners.push({types: types && types.length ? new Set(types) : null, callback});
    if (shared === null) {
      shared = stream({}, (event) => {
        for (const listener of listeners) {
          if (!listener.types || listener.types.has(event.type)) {
            try { listener.callback(event); } catch (e) { console.warn("console listener", e); }
          }
        }
      }, (state) => setLive(state === "live" ? "live" : state, state === "live" ? "ok" : "warn"));
    }
  }

  // A function that runs `fn` at most once per `ms` (the last call always runs).
  function throttle(fn, ms) {
    let timer = null, pending = false;
    return function () {
      if (timer) { pending = true; return; }
      fn();
      timer = setTimeout(function again() {
        timer = null;
        if (pending) { pending = false; fn(); timer = setTimeout(again, ms); }
      }, ms);
    };
  }

  // One formatter for every time on the page (toLocaleString builds a new one per call).
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false});
  function time(ts) {
    if (!ts) return "";
    return timeFormat.format(new Date(ts * 1000));
  }

  function duration(seconds) {
    if (!seconds || seconds < 0) return "";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    return Math.round(seconds / 60) + " min";
  }

  window.Console = {el, post, getJSON, stream, subscribe, throttle, time, duration, prefix, setLive,
    EVENT_TYPES, csrf: () => meta("csrf-token")};

  // Forms marked data-confirm ask first (Cancel, Stop...).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
  // Times rendered by the server as data-ts are shown in the browser's time zone.
  for (const node of document.querySelectorAll("[data-ts]")) {
    const ts = Number(node.getAttribute("data-ts"));
    if (ts) node.textContent = time(ts);
  }
})();
