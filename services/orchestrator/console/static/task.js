// A task's page: reloaded when the server pushes a change of this task (status, attempt).
"use strict";
(function () {
  const C = window.Console;
  const node = document.getElementById("task");
  if (!node) return;
  const id = node.dataset.task;
  const reload = C.throttle(() => window.location.replace(C.prefix + "/tasks/" + encodeURIComponent(id)), 500);
  C.subscribe(["task_started", "task_retrying", "task_completed", "task_failed", "task_cancelled"], (event) => {
    if (event.resource_id === id) reload();
  });
})();
