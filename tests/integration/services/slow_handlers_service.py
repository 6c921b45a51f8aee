"""A service process for the shutdown tests: the path every event service takes, slow handlers.

`python -m tests.integration.services.slow_handlers_service` runs an `EventService`
whose work is, as the dispatcher's, a consumer with several handlers next to another
part, under the service runner. Each handler logs `handling <sequence>`, takes
`SLOW_HANDLE_SECONDS` and logs `handled <sequence>`. The other part logs `stopping`
once the stop is seen and, with `SLOW_FAIL_AT_STOP` set, then fails.

Environment: `CKRV_NATS_URL` (and `CKRV_ENV=dev`), `SLOW_DURABLE` (the consumer),
`SLOW_SUBJECT` (its filter), `SLOW_HANDLERS`, `SLOW_HANDLE_SECONDS`, `SLOW_HTTP_PORT`,
`SLOW_SHUTDOWN_TIMEOUT_SECONDS`, `SLOW_ACK_WAIT_SECONDS`, `SLOW_FETCH_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from ckrv.events.catalog import JobEvent, parse_event
from ckrv.events.consumer import ConsumerSpec, Delivery, EventConsumer
from ckrv.events.subjects import JOBS_STREAM
from ckrv.services.common.event_service import Concurrently, Connections, EventService, Work
from ckrv.services.common.logging import configure_logging
from ckrv.services.common.service import serve_process
from ckrv.services.common.settings import CommonSettings, ServiceSettings

logger = logging.getLogger("slow-handlers")


def spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=os.environ["SLOW_DURABLE"],
        stream=JOBS_STREAM,
        filter_subjects=(os.environ["SLOW_SUBJECT"],),
        batch_size=1,
        handlers=int(os.environ["SLOW_HANDLERS"]),
        ack_wait_seconds=float(os.environ["SLOW_ACK_WAIT_SECONDS"]),
        fetch_timeout_seconds=float(os.environ["SLOW_FETCH_TIMEOUT_SECONDS"]),
    )


async def handle(delivery: Delivery[JobEvent]) -> None:
    logger.info("handling %s", delivery.stream_sequence)
    await asyncio.sleep(float(os.environ["SLOW_HANDLE_SECONDS"]))
    logger.info("handled %s", delivery.stream_sequence)


async def see_the_stop(stop: asyncio.Event) -> None:
    await stop.wait()
    logger.info("stopping")
    if os.environ.get("SLOW_FAIL_AT_STOP"):
        raise RuntimeError("a part of the work failed at the stop")


async def slow_work(connections: Connections) -> Work:
    consumer = EventConsumer(connections.nats.jetstream(), spec(), parse_event, handle)
    return Concurrently(consumer.run, see_the_stop)


def main() -> None:
    configure_logging("slow-handlers", fmt="text")
    settings = ServiceSettings(
        http_port=int(os.environ["SLOW_HTTP_PORT"]),
        shutdown_timeout_seconds=float(os.environ["SLOW_SHUTDOWN_TIMEOUT_SECONDS"]),
    )
    service = EventService("slow-handlers", CommonSettings(), slow_work)
    sys.exit(serve_process(service, settings))


if __name__ == "__main__":
    main()
