"""A job that ended gives up its secret inputs at once: the watcher's consumer of job ends.

A workload's input files (spec, git credential, upload URLs) are read by the worker
as it starts. Once the job has ended they serve nobody, while the workload itself
stays until it is collected (its status, and its output, which the log-relay may
still be reading). So on each end of a job — `succeeded`, `failed` and `timed-out`
as the watcher records them, `cancelled` and `failed` as the dispatcher does — the
inputs of every attempt's workload are released (`Runner.release_input`): a lost
attempt's workload may still be there with its own.

This consumer is the one place that does it, whoever appended the end. It follows
the ends on JOBS through a durable consumer that the watcher's replicas share, and
acknowledges an end only once every release succeeded; a watcher that dies between
recording an end and releasing leaves the end to be delivered again, so neither the
services that append ends nor the reconcile pass need to release anything. An end
that fails for longer than the retries (the cluster refusing) is dead-lettered, and
the inputs then go with their workload: when the watcher collects it, or by the
Kubernetes Job's `ttlSecondsAfterFinished`.
"""

from __future__ import annotations

from nats.js.api import DeliverPolicy

from ckrv.events.catalog import JobEvent, workload_name
from ckrv.events.consumer import ConsumerSpec, Delivery
from ckrv.events.state import JobState
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import JOBS_STREAM
from ckrv.services.runners.base import Runner

CONSUMER = "watcher"
# A job's end; `rejected` is not among them: a rejected job never had a workload.
_FOLLOWED_EVENTS = ("succeeded", "failed", "timed-out", "cancelled")


def input_release_spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=CONSUMER,
        stream=JOBS_STREAM,
        filter_subjects=tuple(f"jobs.*.{event}" for event in _FOLLOWED_EVENTS),
        # Patient: a release fails only while the cluster refuses, which can last minutes.
        retry_delays=(1.0, 5.0, 30.0, 120.0),
        max_deliver=10,
        # One message a fetch: nats-py holds the first of a larger fetch until the batch is
        # full or the fetch times out, and a job's inputs should go the moment it ends.
        batch_size=1,
        # From the consumer's creation on: jobs that ended before lose their inputs with their
        # workloads, and replaying months of ends would only ask to delete what is long gone.
        deliver_policy=DeliverPolicy.NEW,
    )


def workloads_to_release(state: JobState) -> list[str]:
    """The workload of each attempt the job had, once it has ended; none before."""
    if not state.is_terminal:
        return []
    return [workload_name(state.job_id, attempt) for attempt in range(1, state.attempt + 1)]


class InputRelease:
    """Releases the inputs of the workloads of each job that ends."""

    def __init__(self, *, store: JobEventStore, runner: Runner) -> None:
        self._store = store
        self._runner = runner

    async def handle(self, delivery: Delivery[JobEvent]) -> None:
        state = (await self._store.load(delivery.payload.job_id)).state
        for name in workloads_to_release(state):
            await self._runner.release_input(name)
