"""The web console in a real browser (Debian's chromium through selenium), against real daemons.

One env-manager + orchestrator stack (tasks really run in Docker) and one browser serve the
module; the access tests use a second orchestrator with a token, at http://localhost (its own
cookies). Each test saves screenshots under its tmp_path; with AGENT_INFRA_CONSOLE_DOCS=DIR
(e.g. docs/console) the page screenshots are written there too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb
from selenium.webdriver.common.by import By

from tests.browser_support import Browser, chromium, console_errors, screenshot, wait_for
from tests.daemon_support import running_daemon
from tests.orchestrator_support import (
    Stack,
    gated,
    new_id,
    orchestrator_stack,
    submit,
    wait_done,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]
# The screenshots that stand for a page in docs/console (one a page).
DOC_PAGES = frozenset({"overview", "tasks", "task", "events", "login"})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as driver:
        yield driver


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with orchestrator_stack(tmp_path_factory.mktemp("console")) as started:
        yield started


def shot(browser: Browser, tmp_path: Path, name: str) -> None:
    path = screenshot(browser, tmp_path / f"{name}.png")
    docs = os.environ.get("AGENT_INFRA_CONSOLE_DOCS")
    if docs and name in DOC_PAGES:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(docs) / f"{name}.png")


def total(browser: Browser, status: str) -> int:
    cell = browser.find_element(By.CSS_SELECTOR, f'#counts tfoot [data-status="{status}"]')
    return int(cell.text or 0)


def live(browser: Browser) -> None:
    wait_for(browser, lambda b: b.find_element(By.ID, "live-state").text == "live",
             "the page's event stream to be open")


async def test_overview_loads_without_errors_and_counts_follow_a_submit(
        stack: Stack, browser: Browser, tmp_path: Path) -> None:
    browser.get(f"{stack.daemon.http_url}/")
    assert browser.current_url.endswith("/console/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    live(browser)
    wait_for(browser, lambda b: "SERVING" in b.find_element(By.ID, "health").text,
             "the dependency table")
    browser.execute_script("window.__same_page = 42;")
    before = total(browser, "completed")
    task_id = new_id("console")
    await submit(stack.stub, task_id, "echo counted")
    await wait_done(stack.stub, [task_id])
    wait_for(browser, lambda b: total(b, "completed") == before + 1,
             "the completed count to go up on the open page")
    assert browser.execute_script("return window.__same_page;") == 42, "the page was reloaded"
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#chart rect"),
             "the throughput chart's bars")
    assert console_errors(browser) == []
    shot(browser, tmp_path, "overview")


async def test_task_page_shows_stdout_as_text(stack: Stack, browser: Browser,
                                              tmp_path: Path) -> None:
    task_id = new_id("stdout")
    line = "<script>window.__pwned = 1</script><b>bold?</b> hello-console"
    await submit(stack.stub, task_id, f"echo '{line}'; echo 'to stderr' >&2")
    await wait_done(stack.stub, [task_id])
    browser.get(f"{stack.daemon.http_url}/console/tasks/{task_id}")
    stdout = browser.find_element(By.ID, "stdout")
    assert stdout.text.strip() == line
    assert browser.find_element(By.ID, "stderr").text.strip() == "to stderr"
    assert browser.find_elements(By.CSS_SELECTOR, "#stdout script, #stdout b") == []
    assert browser.execute_script("return window.__pwned;") is None
    assert "completed" in browser.find_element(By.ID, "task-status").text
    assert console_errors(browser) == []
    shot(browser, tmp_path, "task")
    # Resubmit: the same request under a new id, whose page the browser lands on.
    browser.find_element(By.ID, "resubmit").click()
    wait_for(browser, lambda b: f"/console/tasks/{task_id}.re-" in b.current_url,
             "the resubmitted task's page")
    fresh = browser.current_url.rsplit("/", 1)[1].split("?")[0]
    assert f"resubmitted from {task_id}" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    done = await wait_done(stack.stub, [fresh])
    assert done[fresh].status == "completed"
    assert done[fresh].result["stdout"].strip() == line


async def test_cancel_from_the_page_cancels_a_running_task(stack: Stack, browser: Browser,
                                                           tmp_path: Path) -> None:
    task_id = new_id("cancel")
    await submit(stack.stub, task_id, gated("echo never", gate=f"gate-{task_id}"))
    await stack.wait_container(task_id)
    browser.get(f"{stack.daemon.http_url}/console/tasks/{task_id}")
    assert browser.find_element(By.ID, "task-status").text == "running"
    assert browser.find_element(By.ID, "sent-to").text == stack.env_manager_addr
    browser.find_element(By.ID, "cancel").click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda b: b.find_element(By.ID, "task-status").text == "cancelled",
             "the page to show the task cancelled")
    found = await stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
    assert found.status == "cancelled"
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    assert [row.find_elements(By.TAG_NAME, "td")[3].text for row in attempts] == ["cancelled"]
    shot(browser, tmp_path, "task-cancelled")


async def test_task_list_filters_on_the_server(stack: Stack, browser: Browser,
                                               tmp_path: Path) -> None:
    prefix = new_id("list")
    ids = [f"{prefix}-{n}" for n in range(3)]
    for task_id in ids:
        await submit(stack.stub, task_id, "true")
    await wait_done(stack.stub, ids)
    browser.get(f"{stack.daemon.http_url}/console/tasks?status=completed&id={prefix}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-list tbody tr[data-task]")
    assert sorted(row.get_attribute("data-task") or "" for row in rows) == ids
    browser.get(f"{stack.daemon.http_url}/console/tasks?id={prefix}&size=2")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#task-list tbody tr[data-task]")) == 2
    browser.find_element(By.ID, "older").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-list tbody tr[data-task]")
    assert [row.get_attribute("data-task") for row in rows] == [ids[0]]
    assert console_errors(browser) == []
    browser.get(f"{stack.daemon.http_url}/console/tasks?from=yesterday")
    assert "from must be unix seconds or ISO 8601" in browser.find_element(
        By.CSS_SELECTOR, "p.error").text
    assert ["400 (Bad Request)" in error for error in console_errors(browser)] == [True]
    browser.get(f"{stack.daemon.http_url}/console/tasks")
    shot(browser, tmp_path, "tasks")


async def test_event_tail_receives_new_events_and_replays_without_gaps(
        stack: Stack, browser: Browser, tmp_path: Path) -> None:
    started = time.time() - 1
    browser.get(f"{stack.daemon.http_url}/console/events")
    wait_for(browser, lambda b: "live" in b.find_element(By.ID, "tail-state").text,
             "the event tail to be live")
    task_id = new_id("tail")
    await submit(stack.stub, task_id, "echo tail")
    await wait_done(stack.stub, [task_id])

    def types_of(b: Browser) -> list[str]:
        return [row.find_elements(By.TAG_NAME, "td")[2].text
                for row in b.find_elements(By.CSS_SELECTOR, "#events tbody tr")
                if row.find_elements(By.TAG_NAME, "td")[3].text == task_id]

    wait_for(browser, lambda b: "task_completed" in types_of(b), "the tail to show completion")
    assert types_of(browser)[-1] == "task_submitted"  # newest on top
    shot(browser, tmp_path, "events")
    # Replay from a time: every event since then, with contiguous sequence numbers.
    browser.get(f"{stack.daemon.http_url}/console/events?since={started}")
    wait_for(browser, lambda b: "task_completed" in types_of(b), "the replay")
    seqs = sorted(int(row.get_attribute("data-seq") or 0)
                  for row in browser.find_elements(By.CSS_SELECTOR, "#events tbody tr"))
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    # A type filter: only those.
    browser.get(f"{stack.daemon.http_url}/console/events?types=task_completed&since={started}")
    wait_for(browser, lambda b: "task_completed" in types_of(b), "the filtered replay")
    shown = {row.find_elements(By.TAG_NAME, "td")[2].text
             for row in browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")}
    assert shown == {"task_completed"}
    assert console_errors(browser) == []


# -- access: a token, the login form, CSRF ---------------------------------------------------

async def test_without_the_token_the_console_asks_for_it_and_changes_need_csrf(
        browser: Browser, tmp_path: Path) -> None:
    token = "console-" + new_id()
    async with running_daemon("orchestrator", tmp_path, env={"ORCHESTRATOR_AUTH_TOKEN": token},
                              args=["--data-dir", str(tmp_path / "data"),
                                    "--env-managers", "127.0.0.1:9"]) as daemon:
        # Its own host name, so its cookies are not the module stack's.
        base = daemon.http_url.replace("127.0.0.1", "localhost")
        async with aiohttp.ClientSession() as http:
            for path in ("/queue/status", "/console/api/overview", "/console/stream"):
                async with http.get(base + path) as response:
                    assert response.status == 401, path
            async with http.post(base + "/queue/submit", json={"id": "victim"},
                                 headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 201
        browser.get(base + "/console/tasks?class=cpu_short&id=vic")
        assert "/console/login" in browser.current_url
        shot(browser, tmp_path, "login")
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(browser, lambda b: "not the token" in b.find_element(By.TAG_NAME, "main").text,
                 "the login form to refuse a wrong token")
        assert ["401 (Unauthorized)" in error for error in console_errors(browser)] == [True]
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(browser, lambda b: b.current_url.endswith("/console/tasks?class=cpu_short&id=vic"),
                 "the login to go back to the page asked for, query and all")
        assert "victim" in browser.find_element(By.ID, "task-list").text
        cookie = browser.get_cookie("agent_infra_console")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert token not in cookie["value"]
        assert console_errors(browser) == []

        # CSRF: the session cookie alone changes nothing; nor does a foreign Origin.
        jar = {"agent_infra_console": cookie["value"]}
        async with aiohttp.ClientSession(cookies=jar) as http:
            async with http.get(base + "/console/tasks/victim") as response:
                page = await response.text()
            match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
            assert match is not None
            cancel = base + "/console/tasks/victim/cancel"
            async with http.post(cancel) as response:
                assert response.status == 403
                assert "csrf" in (await response.json())["error"]
            async with http.post(cancel, data={"csrf": match.group(1)},
                                 headers={"Origin": "http://evil.example"}) as response:
                assert response.status == 403
            async with http.post(cancel, data={"csrf": "0" * 64},
                                 headers={"Origin": base}) as response:
                assert response.status == 403
            async with http.get(base + "/queue/status",
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert (await response.json())["totals"]["cancelled"] == 0
            async with http.post(cancel, data={"csrf": match.group(1)}, headers={"Origin": base},
                                 allow_redirects=False) as response:
                assert response.status == 303
        browser.get(base + "/console/tasks/victim")
        assert browser.find_element(By.ID, "task-status").text == "cancelled"
        # Signing out ends the session: the console asks for the token again.
        browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_for(browser, lambda b: "/console/login" in b.current_url, "the login form")
        browser.get(base + "/console/")
        assert "/console/login" in browser.current_url
    await asyncio.sleep(0)
