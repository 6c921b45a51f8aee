"""Properties of the state machine over generated event histories of one job."""

from __future__ import annotations

import functools
import itertools
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from ckrv.events.catalog import EVENT_TYPES, JobEvent, WorkloadPhase, encode_event, parse_event
from ckrv.events.state import JobState, JobTransitionError, decide, evolve, fold, initial_state
from tests.unit.events.job_builders import JOB_ID, MAX_ATTEMPTS, make_command, make_event

COMMAND_KINDS = (
    "submit",
    "queue",
    "reject",
    "dispatch",
    "start",
    "phase",
    "artifact",
    "succeed",
    "fail",
    "timeout",
    "cancel",
    "confirm",
    "lost",
    "retry",
    "expire",
)
PHASES = st.sampled_from([phase.value for phase in get_args(WorkloadPhase)])
ATTEMPTS = st.integers(1, MAX_ATTEMPTS + 1)
EVENT_IDS = st.uuids()

properties = settings(max_examples=100, deadline=None)


@st.composite
def random_decision(draw: st.DrawFn, state: JobState) -> list[JobEvent]:
    """What `decide` makes of any command about any attempt: often nothing, as it refuses."""
    kind = draw(st.sampled_from(COMMAND_KINDS))
    fields = {"phase": draw(PHASES)} if kind == "phase" else {}
    command = make_command(kind, draw(ATTEMPTS), event_id=draw(EVENT_IDS), **fields)
    try:
        return decide(state, command)
    except JobTransitionError:
        return []


# One command of each kind per attempt (and phase), built once: building is the slow part.
COMMANDS = {
    (kind, attempt, phase): make_command(kind, attempt, **({"phase": phase} if phase else {}))
    for kind in COMMAND_KINDS
    for attempt in range(1, MAX_ATTEMPTS + 2)
    for phase in ([phase.value for phase in get_args(WorkloadPhase)] if kind == "phase" else [None])
}
# Commands that end a job, or start to, are drawn less often than the others, so that histories
# live long enough to lose workloads and retry them.
ENDING_KINDS = {"reject", "succeed", "fail", "timeout", "cancel", "confirm"}


@st.composite
def accepted_decision(draw: st.DrawFn, state: JobState) -> list[JobEvent]:
    """The events of one of the commands about the current attempt that `decide` accepts."""
    attempt, phase, event_id = max(state.attempt, 1), draw(PHASES), draw(EVENT_IDS)
    accepted = []
    for kind in COMMAND_KINDS:
        command = COMMANDS[kind, attempt, phase if kind == "phase" else None]
        try:
            events = decide(state, command.model_copy(update={"event_id": event_id}))
        except JobTransitionError:
            continue
        accepted += [events] * (1 if kind in ENDING_KINDS else 4) if events else []
    return accepted[draw(st.integers(0, len(accepted) - 1))] if accepted else []


@st.composite
def arbitrary_event(draw: st.DrawFn, state: JobState) -> JobEvent:
    """Any event of the job, about the current attempt or one next to it, whether it fits or not."""
    event_type = draw(st.sampled_from(sorted(EVENT_TYPES)))
    fields = {"phase": draw(PHASES)} if event_type == "job.phase-changed" else {}
    current = max(state.attempt, 1)
    # A retry names the attempt it creates, so it is never the first.
    lowest = 2 if event_type == "job.retried" else max(current - 1, 1)
    attempt = draw(st.integers(lowest, max(current + 1, lowest)))
    return make_event(event_type, attempt, event_id=draw(EVENT_IDS), **fields)


@st.composite
def histories(draw: st.DrawFn) -> list[JobEvent]:
    """A job's events: mostly decided ones, with arbitrary events and redeliveries mixed in."""
    events: list[JobEvent] = []
    state = initial_state(JOB_ID)
    for _ in range(draw(st.integers(5, 50))):
        step = draw(
            st.sampled_from(["decided", "decided", "arbitrary", "arbitrary", "redelivered"])
        )
        if step == "redelivered" and events:
            new = [draw(st.sampled_from(events))]
        elif step == "arbitrary":
            new = [draw(arbitrary_event(state))]
        else:
            new = draw(accepted_decision(state))
        for event in new:
            state = evolve(state, event)
        events.extend(new)
    return events


def states_along(events: list[JobEvent]) -> list[JobState]:
    """The state after each event, starting with the new job."""
    states = [initial_state(JOB_ID)]
    for event in events:
        states.append(evolve(states[-1], event))
    return states


@properties
@given(histories())
def test_a_terminal_status_is_final(events: list[JobEvent]) -> None:
    terminal = None
    for state in states_along(events):
        if terminal is not None:
            assert state.status is terminal
        elif state.is_terminal:
            terminal = state.status


@properties
@given(histories())
def test_attempts_never_decrease_nor_exceed_the_maximum(events: list[JobEvent]) -> None:
    states = states_along(events)
    for before, after in itertools.pairwise(states):
        assert before.attempt <= after.attempt <= after.max_attempts


@properties
@given(histories(), st.data())
def test_replay_is_deterministic(events: list[JobEvent], data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(events)))
    prefix = fold(JOB_ID, events[:split])

    assert fold(JOB_ID, events[:split]) == prefix
    assert functools.reduce(evolve, events[split:], prefix) == fold(JOB_ID, events)


@properties
@given(histories())
def test_replay_from_the_wire_gives_the_same_state(events: list[JobEvent]) -> None:
    decoded = [parse_event(encode_event(event)) for event in events]

    assert decoded == events
    assert fold(JOB_ID, decoded) == fold(JOB_ID, events)


@properties
@given(histories())
def test_an_event_applied_twice_changes_nothing(events: list[JobEvent]) -> None:
    for event, state in zip(events, states_along(events)[1:], strict=True):
        assert evolve(state, event) == state


@properties
@given(histories(), st.data())
def test_a_late_redelivery_changes_nothing(events: list[JobEvent], data: st.DataObject) -> None:
    if not events:
        return
    original = data.draw(st.integers(0, len(events) - 1))
    redelivered_at = data.draw(st.integers(original + 1, len(events)))
    redelivered = [*events[:redelivered_at], events[original], *events[redelivered_at:]]

    assert fold(JOB_ID, redelivered) == fold(JOB_ID, events)


@properties
@given(histories(), st.data())
def test_what_decide_yields_evolve_applies(events: list[JobEvent], data: st.DataObject) -> None:
    state = fold(JOB_ID, events)

    for event in data.draw(random_decision(state)):
        after = evolve(state, event)
        assert after.ignored_event_count == state.ignored_event_count
        assert after.event_count == state.event_count + 1
        state = after
