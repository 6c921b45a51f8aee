"""Sends one signed webhook request and says how it went; never raises for the receiver's faults.

Connections resolve names through `PublicAddressResolver`, so in the cloud they
only ever reach the public addresses that were checked; redirects are not
followed (a 3xx is a failed attempt, and cannot lead anywhere else).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp

from ckrv.services.notifier.addresses import (
    PublicAddressResolver,
    WebhookUrlError,
    parse_webhook_url,
)
from ckrv.services.notifier.policy import AttemptOutcome

USER_AGENT = "ckrv-webhooks/1"
# Of a failed answer's body, what is kept for its owner to see in the delivery's error.
ERROR_BODY_CHARACTERS = 200
_ERROR_BODY_BYTES = ERROR_BODY_CHARACTERS * 4


class WebhookSender:
    """One pool of keep-alive connections for every endpoint; `open` it on the loop it runs on."""

    def __init__(
        self,
        *,
        cloud: bool,
        timeout_seconds: float,
        max_connections: int,
    ) -> None:
        self._cloud = cloud
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._timeout_seconds = timeout_seconds
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=PublicAddressResolver(cloud=self._cloud),
            # Every new connection resolves (and checks) again; none reuses an older answer.
            use_dns_cache=False,
            # No limit per host: endpoints of many users may share one (the notifier limits
            # each endpoint instead).
            limit=self._max_connections,
            limit_per_host=0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT},
            # Proxy settings from the environment would connect elsewhere than checked.
            trust_env=False,
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptOutcome:
        assert self._session is not None, "open() the sender first"
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            # An address in the URL is never looked up, so the resolver would not see it.
            parse_webhook_url(url, cloud=self._cloud)
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status_code = response.status
                # Read (a short answer whole) so the connection can carry the next request.
                answer = await response.content.read(_ERROR_BODY_BYTES)
                if not 200 <= status_code < 300:
                    error = _answer_error(response, answer)
        except WebhookUrlError as refused:
            error = f"not sent: {refused}"
        except TimeoutError:
            error = f"no answer within {self._timeout_seconds:g} s"
        except aiohttp.ClientConnectorError as failure:
            error = f"cannot connect: {failure.os_error.strerror or failure.os_error}"
        except aiohttp.ClientError as failure:
            error = f"{type(failure).__name__}: {failure}"
        return AttemptOutcome(status_code, (time.perf_counter() - started) * 1000, error)


def _answer_error(response: aiohttp.ClientResponse, body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())[:ERROR_BODY_CHARACTERS]
    reason = f"HTTP {response.status}" + (f" {response.reason}" if response.reason else "")
    return f"{reason}: {text}" if text else reason
