"""The web console's first render with 10,000 tasks in the store, against the same daemon's
/health and /queue/status in the same run, and the weight of its assets.

    .venv/bin/python bench/console.py [--tasks 10000] [--rounds 20] [--strict]

A store is filled in-process through the orchestrator's own task writes (tasks_repo: insert,
then finish), 70% completed with a few KB of stdout, 10% failed with an error, 20% pending, each
with its events; then an orchestrator is started on it (its classes' concurrency 0, so nothing
is dispatched). Each round GETs, in turn: /health and /queue/status (BASELINE: the cheapest HTTP
answer and the same counts the overview shows), then /console/ (overview: counts, the 15-minute
chart, newest failures) and /console/tasks (the first page of the list) with the session cookie,
reading each whole body. Figures are medians over the rounds.

When /usr/bin/chromium and /usr/bin/chromedriver exist, each page is also loaded in headless
Chromium and its first-contentful-paint read from the browser's Performance API (the median of
5 loads, cached assets, as a user reloading the page sees it), beside the login form's (the
browser's own floor on this machine, in the same run).

Targets: each page's server time and browser first paint under 300 ms, assets (everything in
console/static) under 300 KB. The exit status is 0 whatever the figures, unless --strict (then
1 when a target is missed); 2 when the daemon does not start or a page does not answer 200.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from agent_infra.orchestrator import tasks_repo  # noqa: E402
from agent_infra.orchestrator.console.shell import STATIC  # noqa: E402
from agent_infra.orchestrator.model import TaskRequest, TaskState  # noqa: E402
from agent_infra.orchestrator.store import Store, Tx  # noqa: E402

from bench._support import BenchError, arguments, run_and_report  # noqa: E402
from tests.daemon_support import running_daemon  # noqa: E402

TARGET_MS = 300.0
ASSETS_TARGET_KB = 300.0
PAGES = {"overview": "/console/", "tasks": "/console/tasks"}
BASELINES = {"/health": "/health", "/queue/status": "/queue/status"}
BROWSER_LOADS = 5
# The browser's floor on this machine in the same run: the console's smallest page (a form,
# no data read), with the same stylesheet and script.
BROWSER_BASELINE = {"login form": "/console/login"}
CHUNK = 1000
# The page's first-contentful-paint (ms from navigation start), waiting up to 5 s for the entry;
# null when the browser records none.
PAINT_SCRIPT = """
const done = arguments[arguments.length - 1];
const found = () => performance.getEntriesByName('first-contentful-paint')[0];
if (found()) { done(found().startTime); return; }
new PerformanceObserver(() => { if (found()) done(found().startTime); })
  .observe({type: 'paint', buffered: true});
setTimeout(() => done(found() ? found().startTime : null), 5000);
"""
STDOUT = ("line of output from the task, long enough to look real\n" * 60)


@dataclass
class Figures:
    tasks: int
    fill_s: float
    assets_kb: float
    server_ms: dict[str, list[float]] = field(default_factory=dict)
    html_kb: dict[str, float] = field(default_factory=dict)
    paint_ms: dict[str, float] = field(default_factory=dict)
    browser_note: str = ""


async def fill(data_dir: Path, count: int) -> None:
    store = await Store.open(data_dir / "orchestrator.sqlite3")
    try:
        for start in range(0, count, CHUNK):
            def write(tx: Tx, start: int = start) -> None:
                now = time.time()
                for index in range(start, min(start + CHUNK, count)):
                    request = TaskRequest(
                        id=f"bench-{index:06d}", task_class="cpu_short",
                        payload={"command": f"echo task {index}", "env": '{"N": "1"}'})
                    tasks_repo.insert(tx, request, seq=index + 1)
                    kind = index % 10
                    if kind < 7:
                        tasks_repo.mark_running(tx, request.id, 1, now - 30)
                        tasks_repo.finish(tx, request.id, TaskState.COMPLETED, {
                            "exit_code": "0", "stdout": STDOUT, "stderr": "",
                            "stdout_truncated": "false", "duration_ms": "812"}, "",
                            now - (count - index) * 0.05)
                    elif kind < 8:
                        tasks_repo.mark_running(tx, request.id, 1, now - 30)
                        tasks_repo.finish(tx, request.id, TaskState.FAILED, {
                            "exit_code": "1", "stderr": "boom\n"}, "exit code 1",
                            now - (count - index) * 0.05)
            await store.write(write)
    finally:
        await store.close()


async def measure(tasks: int, rounds: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        workdir = Path(tmp)
        began = time.perf_counter()
        await fill(workdir / "data", tasks)
        figures = Figures(tasks, time.perf_counter() - began,
                          sum(p.stat().st_size for p in STATIC.iterdir()) / 1024)
        config = workdir / "orchestrator.toml"
        config.write_text("".join(
            f"[classes.{name}]\nconcurrency = 0\nmax_backlog = {tasks * 2}\n"
            for name in ("cpu_short", "cpu_long", "gpu")))
        async with running_daemon("orchestrator", workdir, args=[
                "--config", str(config), "--data-dir", str(workdir / "data"),
                "--env-managers", "127.0.0.1:9"]) as daemon:
            base = daemon.http_url
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/console/") as response:  # the session cookie
                    if response.status != 200:
                        raise BenchError(f"/console/ answered {response.status}")
                paths = {**BASELINES, **PAGES}
                for _ in range(2):  # warm-up: templates compiled, pages in the page cache
                    for path in paths.values():
                        await _get(http, base + path)
                for _ in range(rounds):
                    for name, path in paths.items():
                        seconds, size = await _get(http, base + path)
                        figures.server_ms.setdefault(name, []).append(seconds * 1000)
                        figures.html_kb[name] = size / 1024
            await asyncio.to_thread(_browser, base, figures)
        return figures


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    began = time.perf_counter()
    async with http.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise BenchError(f"{url} answered {response.status}")
    return time.perf_counter() - began, len(body)


def _browser(base: str, figures: Figures) -> None:
    try:
        from tests.browser_support import CHROMEDRIVER, CHROMIUM, chromium
    except ImportError as exc:
        figures.browser_note = f"no browser figures: {exc}"
        return
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        figures.browser_note = "no browser figures: /usr/bin/chromium or chromedriver missing"
        return
    with chromium() as browser:
        for name, path in {**BROWSER_BASELINE, **PAGES}.items():
            paints = []
            for _ in range(BROWSER_LOADS + 1):
                browser.get(base + path)
                paint = browser.execute_async_script(PAINT_SCRIPT)
                if paint is None:
                    raise BenchError(f"{path}: the browser reported no first-contentful-paint")
                paints.append(float(paint))
            figures.paint_ms[name] = statistics.median(paints[1:])  # the first fills the cache


def report(figures: Figures) -> bool:
    print(f"store: {figures.tasks} tasks (70% completed, 10% failed, 20% pending), filled in "
          f"{figures.fill_s:.1f} s")
    print(f"{'GET':<16}{'median ms':>10}{'p90 ms':>9}{'body KB':>9}")
    ok = True
    for name, values in figures.server_ms.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        median = statistics.median(values)
        mark = ""
        if name in PAGES:
            passed = median < TARGET_MS
            ok &= passed
            mark = f"  {'PASS' if passed else 'FAIL'} (< {TARGET_MS:.0f} ms)"
        print(f"{name:<16}{median:>10.1f}{p90:>9.1f}{figures.html_kb[name]:>9.1f}{mark}")
    for name, paint in figures.paint_ms.items():
        if name in BROWSER_BASELINE:
            print(f"browser first-contentful-paint {name} (baseline): {paint:.0f} ms")
            continue
        passed = paint < TARGET_MS
        ok &= passed
        print(f"browser first-contentful-paint {name}: {paint:.0f} ms  "
              f"{'PASS' if passed else 'FAIL'} (< {TARGET_MS:.0f} ms)")
    if figures.browser_note:
        print(figures.browser_note)
    passed = figures.assets_kb < ASSETS_TARGET_KB
    ok &= passed
    print(f"assets (console/static): {figures.assets_kb:.1f} KB  "
          f"{'PASS' if passed else 'FAIL'} (< {ASSETS_TARGET_KB:.0f} KB)")
    return ok


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    return run_and_report("console", measure(args.tasks, args.rounds), report,
                          strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
