"""A real browser for the web console's tests: Debian's chromium driven by its chromedriver.

Nothing is downloaded: selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver
(scripts/bootstrap.sh apt-installs them). A missing one fails the test saying what to run.

    with chromium(tmp_path) as browser:     # or one per module (a module-scoped fixture)
        browser.get(url)
        wait_for(browser, lambda b: b.find_element(By.ID, "x").text == "y", "x to be y")
        assert console_errors(browser) == []
        screenshot(browser, tmp_path / "page.png")
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags that work as root in a container with no display and no network beyond loopback.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")
#: What chromium() gives: the Chrome driver (get_log is Chromium's).
Browser = webdriver.Chrome
#: Generous: the machine is shared and slow at times; conditions are awaited, never slept on.
WAIT = 30.0


def _require() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise AssertionError(
            f"{', '.join(missing)} missing: the console's browser tests need Debian's chromium "
            "and chromium-driver; run `bash scripts/bootstrap.sh` (as root it apt-installs "
            "them) or `apt-get install chromium chromium-driver`")


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, quit (and its profile removed) afterwards.
    Its browser log (console errors) is kept: see console_errors()."""
    _require()
    profile = tempfile.mkdtemp(prefix="agent-infra-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Browser, check: Callable[[Browser], Any], what: str,
             timeout: float = WAIT) -> Any:
    """`check(driver)`'s first truthy value, polled; fails naming `what` after `timeout` s."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                             f"(at {driver.current_url})") from None


def console_errors(driver: Browser) -> list[str]:
    """The browser's SEVERE log entries since the last call (JS errors, failed loads, CSP)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in entries
            if entry.get("level") == "SEVERE"]


def screenshot(driver: Browser, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    return path
