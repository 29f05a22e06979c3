// The task list: says when tasks changed since it was rendered (no page-wide polling).
"use strict";
(function () {
  const C = window.Console;
  const note = document.getElementById("list-note");
  let changes = 0;
  C.subscribe(["task_submitted", "task_completed", "task_failed", "task_cancelled", "task_started"], (event) => {
    changes += 1;
    note.replaceChildren(C.el("a", {href: window.location.pathname + window.location.search,
      text: changes + " change" + (changes === 1 ? "" : "s") + " since loaded: refresh"}));
    const row = document.querySelector('tr[data-task="' + CSS.escape(event.resource_id) + '"] .status');
    if (row && event.data && event.data.status) { row.textContent = event.data.status; row.className = "status " + event.data.status; }
    else if (row && event.type === "task_started") { row.textContent = "running"; row.className = "status running"; }
  });
})();
