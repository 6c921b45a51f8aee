"""`ckrv cloud login --no-browser` finished by a person in a real browser.

Headless Chromium (Debian's, at /usr/bin/chromium; `just browser` installs it)
driven by Playwright signs up on the activation page, enters the code the CLI
printed and approves; the CLI, polling meanwhile, exits logged in. Screenshots of
the page go to tests/e2e/artifacts/.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import httpx
import pytest

from tests.running_gateway import RunningGateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
USER_CODE = re.compile(r"\b([B-DF-HJ-NP-TV-XZ]{4}-[2-9]{4})\b")
URL = re.compile(r"(https?://\S+/activate)\b")
PASSWORD = "a browser-typed passphrase"
CLIENT_ID = "ckrv-cli"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium; a missing browser fails the test, it does not skip it."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `just browser` "
            "(apt-get install chromium) before the browser tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run `just setup` (it is in the dev extra)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 760})
    try:
        yield context.new_page()
    finally:
        context.close()


class Login:
    """`ckrv cloud login --no-browser` running in the background, its output read as it comes."""

    def __init__(self, gateway: RunningGateway, config_home: Path) -> None:
        self.config_home = config_home
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CKRV_", "CHAKRAVARTI_"))
        }
        env |= {
            "CKRV_API_URL": gateway.api_url,
            "CKRV_CREDENTIAL_STORE": "file",
            "XDG_CONFIG_HOME": str(config_home),
            "HOME": str(config_home),
        }
        env.pop("DISPLAY", None)
        env.pop("BROWSER", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ckrv.cli.app", "cloud", "login", "--no-browser"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.errors = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output:
                if found := pattern.search(line):
                    return found
            try:
                self.output.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
        self.stop()
        raise AssertionError(
            f"`ckrv cloud login` printed no {pattern.pattern!r}:\n"
            + "".join(self.output)
            + self.errors
        )

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self._reader.join(timeout=5)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        assert self.process.stderr is not None
        self.errors = self.process.stderr.read()
        return code, "".join(self.output), self.errors

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stderr is not None and not self.errors:
            self.errors = self.process.stderr.read()


@pytest.fixture
def cli_login(gateway: RunningGateway, tmp_path: Path) -> Iterator[Login]:
    login = Login(gateway, tmp_path)
    try:
        yield login
    finally:
        login.stop()


def _sign_up(page: Page, email: str) -> None:
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Name").fill("Browser Person")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_cli_login_finishes_when_the_code_is_approved_in_the_browser(
    gateway: RunningGateway, cli_login: Login, page: Page
) -> None:
    url = cli_login.wait_for(URL).group(1)
    code = cli_login.wait_for(USER_CODE).group(1)
    assert url == f"{gateway.url}/activate"
    email = f"browser-{uuid4().hex[:12]}@example.com"

    page.goto(url)
    assert page.get_by_role("heading", name="Sign in").is_visible()
    _screenshot(page, "activation-sign-in.png")
    _sign_up(page, email)
    page.get_by_label("Code").fill(code)
    page.get_by_role("button", name="Continue").click()

    assert page.locator("#user-code").inner_text() == code
    assert CLIENT_ID in page.locator("#client").inner_text()
    assert "min" in page.locator("#expires").inner_text()
    assert email in page.locator(".account").inner_text()
    _screenshot(page, "activation.png")
    page.get_by_role("button", name="Approve").click()
    assert page.get_by_role("heading", name="Device connected").is_visible()
    _screenshot(page, "activation-approved.png")

    exit_code, stdout, stderr = cli_login.finish()
    assert exit_code == 0, stdout + stderr
    assert re.search(rf"Logged in as {re.escape(email)}", stdout, re.IGNORECASE), stdout + stderr
    assert list(cli_login.config_home.rglob("credentials-*")), "the login is kept in a file"


def test_a_request_denied_in_the_browser_is_refused_to_the_device(
    gateway: RunningGateway, browser: Browser
) -> None:
    email = f"browser-{uuid4().hex[:12]}@example.com"
    with httpx.Client(base_url=gateway.api_url, timeout=30) as api:
        device = api.post("/auth/device", json={"client_id": CLIENT_ID}).json()

        first_visit = browser.new_context()
        page = first_visit.new_page()
        page.goto(f"{gateway.url}/activate")
        _sign_up(page, email)
        assert page.get_by_role("heading", name="Connect a device").is_visible()
        first_visit.close()

        # Another browser: following the complete URI asks to sign in, then shows the code.
        second_visit = browser.new_context()
        page = second_visit.new_page()
        page.goto(device["verification_uri_complete"])
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill("not the passphrase")
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_text("Wrong email or password.").is_visible()
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        assert page.locator("#user-code").inner_text() == device["user_code"]
        page.get_by_role("button", name="Deny").click()
        assert page.get_by_role("heading", name="Request denied").is_visible()
        second_visit.close()

        refused = api.post(
            "/auth/token",
            json={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device["device_code"],
                "client_id": CLIENT_ID,
            },
        )
    assert refused.json()["error"] == "access_denied"
