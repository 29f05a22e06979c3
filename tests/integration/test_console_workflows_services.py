"""The console's Workflows and Services pages in a real browser (Debian's chromium through
selenium), against a real orchestrator, a real env-manager and real Docker containers:

* a typed workflow created from the page draws one SVG element per node; a run started from the
  page colours its steps live, following the run (a gated step holds it running) to the end;
* a workflow with an invalid spec is refused with the domain's own message, shown inline;
* the services page shows a service of env-manager's registry, its log tail receives lines,
  and stop and start from the page change its state (checked through gRPC).

Each test saves screenshots under its tmp_path; with AGENT_INFRA_CONSOLE_DOCS=DIR (e.g.
docs/console) the page screenshots (workflows, workflow-graph, workflow-run, services) are written
there too. Bad input and a down env-manager are checked over plain HTTP: clear 4xx/503 answers
and an "unavailable" endpoint, never a 500.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from agent_infra.wire import env_manager_pb2 as em_pb
from agent_infra.wire import env_manager_pb2_grpc
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests import browser_support
from tests.browser_support import WAIT, chromium, console_errors, screenshot
from tests.daemon_support import eventually
from tests.docker_support import TEST_IMAGE
from tests.env_support import busybox_service
from tests.orchestrator_support import Stack, orchestrator_stack

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

# cpu_short runs a signature node's payload with this handler: it prints the payload.
HANDLER = (f'[workload_classes.cpu_short.handler]\nimage = "{TEST_IMAGE}"\n'
           'command = ["sh", "-c", "cat; echo"]\n')
TICKER = busybox_service(
    "ticker", 'i=0; while true; do i=$((i+1)); echo "tick-$i <b>&</b>"; sleep 0.3; done')
NODE_IDS = {"answer", "check", "score", "lint", "note"}


def typed_workflow() -> dict[str, Any]:
    """The composer's shape: a signature, a verifier held by a gate file, a reward after it,
    and a parallel branch (a verifier and a custom node)."""
    return {
        "name": "console <demo> & graph", "description": "drawn by the console test",
        "tags": ["console"], "version": "0.1",
        "nodes": [
            {"id": "answer", "name": "Answer", "type": "signature",
             "signature": {"prompt": "question -> answer"}},
            {"id": "check", "name": "Check (gated)", "type": "verifier",
             "verifier": {"command": "while [ ! -f /io/gate ]; do sleep 0.1; done; "
                                     "echo VERIFIED", "success_signal": "VERIFIED"}},
            {"id": "score", "name": "Reward", "type": "reward",
             "reward": {"metric": "accuracy", "target": 0.9}},
            {"id": "lint", "name": "Lint", "type": "verifier",
             "verifier": {"command": "echo lint-ok"}},
            {"id": "note", "name": "Note <b>bold?</b>", "type": "custom",
             "custom": {"message": "<script>alert(1)</script>"}}],
        "edges": [
            {"id": "e1", "source": "answer", "target": "check", "kind": "data"},
            {"id": "e2", "source": "check", "target": "score", "kind": "reward"},
            {"id": "e3", "source": "lint", "target": "note", "kind": "control"}]}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("console-workflows")
    async with orchestrator_stack(workdir, start=False) as started:
        with started.env_manager_config.open("a") as config:
            config.write(HANDLER + TICKER)
        await started.start_env_manager()
        await started.start_orchestrator()
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], what: str,
             timeout: float = WAIT) -> Any:
    """browser_support.wait_for, telling what the page showed when it timed out."""
    def safe(d: WebDriver) -> Any:
        try:
            return check(d)
        except StaleElementReferenceException:
            return False
    try:
        return browser_support.wait_for(driver, safe, what, timeout)
    except AssertionError as exc:
        text = driver.find_element(By.TAG_NAME, "body").text[-3000:]
        raise AssertionError(f"{exc}; the page shows:\n{text}\n"
                             f"console: {console_errors(driver)[-10:]}") from None


def shoot(driver: WebDriver, path: Path, page: str = "") -> None:
    """A screenshot at `path`; for a `page`, also DIR/page.png with AGENT_INFRA_CONSOLE_DOCS."""
    screenshot(driver, path)
    docs = os.environ.get("AGENT_INFRA_CONSOLE_DOCS")
    if docs and page:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(docs) / f"{page}.png")


def node_states(driver: WebDriver) -> dict[str, str]:
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll('#workflow-graph g.node'))"
        ".map(n => [n.getAttribute('data-node-id'), n.getAttribute('data-status')]);")
    return dict(found)


def fill(driver: WebDriver, element_id: str, text: str) -> None:
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1];",
                          element_id, text)


async def test_typed_workflow_graph_follows_a_run_to_the_end(
        stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    base = stack.daemon.http_url
    browser.get(f"{base}/console/workflows/new")
    fill(browser, "spec", json.dumps(typed_workflow(), indent=1))
    browser.find_element(By.ID, "create").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "workflow-graph"), "the graph page")
    workflow_id = browser.find_element(By.ID, "workflow-id").text
    nodes = browser.find_elements(By.CSS_SELECTOR, "#workflow-graph g.node")
    assert sorted(str(node.get_attribute("data-node-id")) for node in nodes) == sorted(NODE_IDS)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#workflow-graph path.edge")) == 3
    # Caller's text is text: the name with markup shows as written, no element made of it.
    assert browser.find_element(By.TAG_NAME, "h1").text == "console <demo> & graph"
    assert not browser.find_elements(By.CSS_SELECTOR, "#workflow-graph b")
    # Left to right: a node's parents are drawn to its left.
    xs = {node.get_attribute("data-node-id"): node.rect["x"] for node in nodes}
    assert xs["answer"] < xs["check"] < xs["score"] and xs["lint"] < xs["note"]

    fill(browser, "run-input", '{"question": "2+2?"}')
    browser.find_element(By.ID, "start-run").click()
    wait_for(browser, lambda d: "run=" in d.current_url, "the run to be shown")
    run_id = browser.current_url.split("run=")[1]
    # The gate holds `check` running while the other branch finishes.
    wait_for(browser, lambda d: node_states(d).get("check") == "running"
             and node_states(d).get("note") == "completed", "check running, note completed")
    states = node_states(browser)
    assert states["answer"] == "completed" and states["score"] == "pending", states
    running_fill = browser.execute_script(
        "return getComputedStyle(document.querySelector("
        "'#workflow-graph g.node[data-node-id=check] rect')).fill;")
    done_fill = browser.execute_script(
        "return getComputedStyle(document.querySelector("
        "'#workflow-graph g.node[data-node-id=answer] rect')).fill;")
    assert running_fill != done_fill, (running_fill, done_fill)
    shoot(browser, tmp_path / "workflow-running.png", "workflow-graph")

    # When each node's colour changes in the page (same clock as the daemon's: one machine).
    browser.execute_script(
        "window.__coloured = {};"
        "new MutationObserver(ms => ms.forEach(m => { const n = m.target;"
        " window.__coloured[n.getAttribute('data-node-id') + ':' + n.getAttribute("
        "'data-status')] = Date.now() / 1000; }))"
        ".observe(document.getElementById('workflow-graph'),"
        " {subtree: true, attributes: true, attributeFilter: ['data-status']});")
    stack.open_gate()
    wait_for(browser, lambda d: set(node_states(d).values()) == {"completed"},
             "every step completed")
    wait_for(browser, lambda d: d.find_element(By.ID, "run-status").text == "completed",
             "the run completed")
    code, run = await stack.http("GET", f"/workflow-runs/{run_id}")
    assert code == 200 and run["status"] == "succeeded", run
    coloured = browser.execute_script("return window.__coloured;")
    finished = {step["node_id"]: datetime.fromisoformat(step["completed_at"]).timestamp()
                for step in run["steps"]}
    # The step's change committed (its completed_at) -> its node coloured in the page.
    lags = {node: coloured[f"{node}:completed"] - finished[node] for node in ("check", "score")}
    print("step completed -> node coloured: "
          + ", ".join(f"{node} {lag * 1000:.0f} ms" for node, lag in lags.items()))
    assert all(-0.05 < lag < 5.0 for lag in lags.values()), lags  # generous: a shared machine
    shoot(browser, tmp_path / "workflow-done.png")
    assert console_errors(browser) == []

    # The runs table follows runs started elsewhere, live.
    def run_row(run: str) -> str:
        rows = browser.find_elements(By.CSS_SELECTOR, f'table.runs tr[data-run-id="{run}"]')
        return rows[0].find_element(By.CSS_SELECTOR, ".status").text if rows else ""
    assert run_row(run_id) == "completed"
    code, other = await stack.http("POST", f"/workflows/{workflow_id}/runs", body={})
    assert code == 201, other
    wait_for(browser, lambda d: run_row(other["id"]) == "completed",
             "the new run listed and completed")

    browser.get(f"{base}/console/workflow-runs/{run_id}")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.steps tr[data-step-id]:not(.step-detail)")
    assert {row.get_attribute("data-step-id") for row in rows} == NODE_IDS
    assert "VERIFIED" in browser.find_element(By.TAG_NAME, "main").text
    assert "<script>alert(1)</script>" in browser.find_element(By.TAG_NAME, "main").text
    shoot(browser, tmp_path / "run.png", "workflow-run")

    # A steps-form workflow saved twice: the list shows its latest revision.
    steps: dict[str, Any] = {"name": "fan out", "steps": [
        {"id": "fetch", "payload": {"command": ["echo", "a"]}},
        {"id": "left", "depends_on": ["fetch"]}, {"id": "right", "depends_on": ["fetch"]},
        {"id": "join", "depends_on": ["left", "right"]}]}
    code, saved = await stack.http("POST", "/workflows", body={"id": "fan-out", **steps})
    assert code == 201, saved
    steps["steps"][3]["payload"] = {"command": ["echo", "joined"]}
    code, saved = await stack.http("PUT", "/workflows/fan-out", body=steps)
    assert (code, saved["revision"]) == (200, 2), saved
    browser.get(f"{base}/console/workflows")
    assert browser.find_elements(By.CSS_SELECTOR, f'tr[data-workflow-id="{workflow_id}"]')
    revision = browser.find_element(By.CSS_SELECTOR, 'tr[data-workflow-id="fan-out"] td.num')
    assert revision.text == "2"
    shoot(browser, tmp_path / "workflows.png", "workflows")
    assert console_errors(browser) == []


async def test_invalid_spec_shows_the_domain_error_inline(
        stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    spec = typed_workflow()
    spec["edges"].append({"id": "e4", "source": "score", "target": "answer"})  # a cycle
    code, answer = await stack.http("POST", "/workflows", body=spec)
    assert code == 400, answer
    browser.get(f"{stack.daemon.http_url}/console/workflows/new")
    fill(browser, "spec", json.dumps(spec))
    browser.find_element(By.ID, "create").click()
    shown = wait_for(browser, lambda d: d.find_elements(By.ID, "spec-error"), "the error")
    assert shown[0].text == answer["error"] and "cycle" in shown[0].text
    # The spec stays in the form to be fixed.
    assert json.loads(browser.find_element(By.ID, "spec").get_attribute("value") or "") == spec
    shoot(browser, tmp_path / "invalid-spec.png")
    # The refusal is a 400 (which the browser logs), and nothing else went wrong.
    assert [error for error in console_errors(browser) if "status of 400" not in error] == []


async def service_state(stack: Stack) -> str:
    assert stack.env_manager is not None
    stub = env_manager_pb2_grpc.EnvManagerServiceStub(stack.env_manager.channel())
    found = await stub.GetServicesStatus(
        em_pb.GetServicesStatusRequest(service_names=["ticker"]), timeout=30)
    return str(found.services["ticker"].status)


async def service_started_at(stack: Stack) -> tuple[str, int]:
    assert stack.env_manager is not None
    stub = env_manager_pb2_grpc.EnvManagerServiceStub(stack.env_manager.channel())
    found = await stub.GetServicesStatus(
        em_pb.GetServicesStatusRequest(service_names=["ticker"]), timeout=30)
    return found.services["ticker"].container_id, found.services["ticker"].started_at


async def wait_service(stack: Stack, wanted: str) -> None:
    async def reached() -> bool:
        return await service_state(stack) == wanted
    await eventually(reached, f"ticker {wanted} (GetServicesStatus)", timeout=WAIT,
                     interval=0.2)


def accept_confirm(driver: WebDriver) -> None:
    def accepted(d: WebDriver) -> bool:
        try:
            d.switch_to.alert.accept()
        except NoAlertPresentException:
            return False
        return True
    wait_for(driver, accepted, "the confirm dialog", timeout=10)


def row_state(driver: WebDriver) -> str:
    rows = driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="ticker"]')
    return str(rows[0].get_attribute("data-state")) if rows else ""


async def test_services_page_tails_logs_and_stops_and_starts(
        stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    assert stack.env_manager is not None
    stub = env_manager_pb2_grpc.EnvManagerServiceStub(stack.env_manager.channel())
    updates = [update async for update in stub.StartServices(
        em_pb.StartServicesRequest(service_names=["ticker"]), timeout=120)]
    assert updates and updates[-1].status in ("healthy", "running"), updates
    browser.get(f"{stack.daemon.http_url}/console/services")
    # The first service is tailed (ticker: the only one), its state filled in live.
    wait_for(browser, lambda d: "service=ticker" in d.current_url and row_state(d) == "running",
             "ticker shown running")
    assert stack.env_manager_addr in browser.find_element(By.CSS_SELECTOR,
                                                          "section.endpoint h2").text
    wait_for(browser, lambda d: "tick-" in d.find_element(By.ID, "log-tail").text,
             "a log line in the tail")
    first = browser.find_element(By.ID, "log-tail").text
    wait_for(browser, lambda d: d.find_element(By.ID, "log-tail").text != first,
             "a new log line")
    shoot(browser, tmp_path / "services-running.png", "services")

    browser.find_element(By.CSS_SELECTOR,
                         'tr[data-service="ticker"] button[data-action="stop"]').click()
    accept_confirm(browser)
    await wait_service(stack, "stopped")
    wait_for(browser, lambda d: row_state(d) == "stopped", "the page to show it stopped")
    shoot(browser, tmp_path / "services-stopped.png")

    browser.find_element(By.CSS_SELECTOR,
                         'tr[data-service="ticker"] button[data-action="start"]').click()
    await wait_service(stack, "running")
    wait_for(browser, lambda d: row_state(d) == "running", "the page to show it running")
    # The tail follows the new container.
    wait_for(browser, lambda d: d.find_element(By.ID, "log-state").text == "following"
             and "tick-" in d.find_element(By.ID, "log-tail").text, "the new container's log")
    # A log line is text: the markup in it is shown, not made into elements.
    assert "tick-1 <b>&</b>" in browser.find_element(By.ID, "log-tail").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#log-tail b")
    shoot(browser, tmp_path / "services-started.png")

    before = await service_started_at(stack)
    browser.find_element(By.CSS_SELECTOR,
                         'tr[data-service="ticker"] button[data-action="restart"]').click()
    wait_for(browser, lambda d: "ok" in (d.find_element(By.ID, "action-result")
                                         .get_attribute("class") or "")
             and not d.find_element(By.ID, "action-result").text.endswith("\u2026"),
             "the restart's answer")

    async def restarted() -> bool:
        return (await service_state(stack) == "running"
                and await service_started_at(stack) != before)
    await eventually(restarted, "ticker restarted (GetServicesStatus)", timeout=WAIT)
    assert console_errors(browser) == []
    browser.get("about:blank")  # its live stream closes


async def test_bad_input_and_a_down_env_manager_get_clear_answers(stack: Stack) -> None:
    """Last in the module: it stops env-manager."""
    base = stack.daemon.http_url
    # unsafe: keep the session cookie of an IP address (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/console/workflows/no-such-workflow") as response:
            assert response.status == 404
            assert "workflow 'no-such-workflow' not found" in unescape(await response.text())
        async with http.get(f"{base}/console/workflow-runs/run-nope/state") as response:
            assert response.status == 404 and "not found" in (await response.json())["error"]
        async with http.get(f"{base}/console/services") as response:
            page = await response.text()
            assert response.status == 200, page
        match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page)
        assert match, page
        headers = {"X-CSRF-Token": match.group(1), "Origin": base}
        code, saved = await stack.http("POST", "/workflows", body=typed_workflow())
        assert code == 201, saved
        async with http.post(f"{base}/console/workflows/{saved['id']}/runs", headers=headers,
                             data={"input": "[1, 2]", "csrf": match.group(1)}) as response:
            assert response.status == 400
            assert "input must be a JSON object" in unescape(await response.text())
        for path, status, words in (
                ("/console/services/0/nosuch/stop", 404, "nosuch"),
                ("/console/services/0/Bad_Name/stop", 400, "service 'Bad_Name' is invalid"),
                ("/console/services/7/ticker/stop", 404, "endpoint 7 not found"),
                ("/console/services/0/ticker/explode", 404, "action 'explode' not found")):
            async with http.post(base + path, headers=headers) as response:
                answer = await response.json()
                assert (response.status, words in answer["error"]) == (status, True), answer

        await stack.stop_env_manager()
        async def shows_unavailable() -> bool:
            async with http.get(f"{base}/console/services") as response:
                page = await response.text()
                assert response.status == 200, page
                assert stack.env_manager_addr in page
                return 'class="endpoint-state unavailable"' in page
        # The page shows the last status the live stream's poller read: keep one open.
        async with http.get(f"{base}/console/services/live") as live:
            assert live.status == 200
            await eventually(shows_unavailable, "the endpoint shown unavailable", timeout=WAIT)
        async with http.post(f"{base}/console/services/0/ticker/restart",
                             headers=headers) as response:
            answer = await response.json()
            assert response.status == 503 and "unavailable" in answer["error"], answer
