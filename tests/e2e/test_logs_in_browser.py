"""A job's log followed by a browser's own `EventSource`, through a connection cut mid-stream.

The page comes from the test (Playwright answers its address) on the origin of a
TCP proxy in front of the session's gateway, and opens the job's log URL with a
stream ticket, as a web page of the product would. The test publishes lines,
cuts every connection of the proxy, publishes more and ends the job; the browser
reconnects by itself, sending the id of the last event it had, and the page must
end up with every line exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
import nats
import pytest
from nats.aio.client import Client

from ckrv.events.store import JobEventStore
from ckrv.services.stack.nats_server import NatsServer
from tests.e2e.test_login_in_browser import browser, page
from tests.integration.gateway.cutting_proxy import CuttingProxy
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import start, succeed
from tests.integration.gateway.log_lines import publish_lines
from tests.running_gateway import RunningGateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "page"]

pytestmark = pytest.mark.e2e

T = TypeVar("T")
WAIT_MILLISECONDS = 20_000
PAGE = """<!doctype html>
<title>Job log</title>
<pre id="log"></pre>
<script>
  window.seen = [];
  window.stream = {opens: 0, errors: 0, status: null, done: false};
  const source = new EventSource(LOG_URL);
  source.onopen = () => { stream.opens += 1; };
  source.onerror = () => { stream.errors += 1; };
  source.addEventListener("end", (event) => { stream.status = JSON.parse(event.data).status; });
  source.onmessage = (event) => {
    if (event.data === "[DONE]") { stream.done = true; source.close(); return; }
    const line = JSON.parse(event.data);
    seen.push(line.seq);
    document.getElementById("log").textContent += line.message + "\\n";
  };
</script>
"""


def on_nats(url: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` with a NATS connection of its own, on a thread of its own: Playwright's
    synchronous API holds this thread's event loop."""

    async def connected() -> T:
        connection = await nats.connect(url)
        try:
            return await work(connection)
        finally:
            await connection.close()

    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, connected()).result()


@pytest.fixture
def proxy(gateway: RunningGateway) -> Iterator[CuttingProxy]:
    address = urlsplit(gateway.url)
    assert address.hostname is not None
    assert address.port is not None
    cutting = CuttingProxy(address.hostname, address.port)
    yield cutting
    cutting.close()


def test_the_browser_reconnects_after_a_cut_and_shows_every_line_once(
    gateway: RunningGateway, nats_server: NatsServer, proxy: CuttingProxy, page: Page
) -> None:
    token = gateway.token(f"browser-{uuid4().hex[:12]}@example.com")
    with httpx.Client(
        base_url=gateway.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        created = api.post("/jobs", json=job_body())
        assert created.status_code == 201, created.text
        job_id = UUID(created.json()["id"])
        on_nats(nats_server.url, lambda nc: start(JobEventStore(nc), job_id))
        on_nats(nats_server.url, lambda nc: publish_lines(nc, job_id, range(1, 4)))
        ticket = api.post(f"/jobs/{job_id}/logs/ticket")
        assert ticket.status_code == 201, ticket.text
        log_path = ticket.json()["url"]

    page_url = f"{proxy.url}/job-log.html"
    body = PAGE.replace("LOG_URL", repr(log_path))
    page.route(page_url, lambda route: route.fulfill(content_type="text/html", body=body))
    page.goto(page_url)
    page.wait_for_function("window.seen.length === 3", timeout=WAIT_MILLISECONDS)

    proxy.cut()
    page.wait_for_function("window.stream.errors >= 1", timeout=WAIT_MILLISECONDS)
    on_nats(nats_server.url, lambda nc: publish_lines(nc, job_id, range(4, 7)))
    page.wait_for_function("window.seen.length >= 6", timeout=WAIT_MILLISECONDS)
    on_nats(nats_server.url, lambda nc: succeed(JobEventStore(nc), job_id))
    page.wait_for_function("window.stream.done", timeout=WAIT_MILLISECONDS)

    assert page.evaluate("window.seen") == [1, 2, 3, 4, 5, 6]
    assert page.evaluate("window.stream.status") == "succeeded"
    # The first connection, and the one the browser made again by itself.
    assert page.evaluate("window.stream.opens") == 2
    assert proxy.connections == 2
    assert page.text_content("#log") == "".join(f"line {seq}\n" for seq in range(1, 7))
