"""Admission: per-user limits, the global capacity, FIFO per user and turns across users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from ckrv.services.dispatcher.admission import AdmissionState, Candidate, choose_admissions

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def job(
    user: UUID, minute: int, *, limit: int = 1, state: AdmissionState = AdmissionState.QUEUED
) -> Candidate:
    return Candidate(uuid4(), user, state, START + timedelta(minutes=minute), limit)


def test_a_user_starts_jobs_oldest_first_up_to_the_tier_limit() -> None:
    alice = uuid4()
    jobs = [job(alice, 3, limit=2), job(alice, 1, limit=2), job(alice, 2, limit=2)]
    assert choose_admissions(jobs, capacity=10) == [jobs[1].job_id, jobs[2].job_id]


def test_running_jobs_count_against_the_limit() -> None:
    alice = uuid4()
    running = job(alice, 0, limit=2, state=AdmissionState.ACTIVE)
    dispatching = job(alice, 1, limit=2, state=AdmissionState.DISPATCHING)
    waiting = job(alice, 2, limit=2)
    assert choose_admissions([running, dispatching, waiting], capacity=10) == []
    assert choose_admissions([running, waiting], capacity=10) == [waiting.job_id]


def test_places_go_round_the_users_when_capacity_is_short() -> None:
    alice, bob, carol = uuid4(), uuid4(), uuid4()
    alices = [job(alice, minute, limit=25) for minute in range(5)]
    bobs = [job(bob, 10 + minute, limit=25) for minute in range(2)]
    carols = [job(carol, 20, limit=25)]
    chosen = choose_admissions([*alices, *bobs, *carols], capacity=4)
    # Alice waited longest, then Bob, then Carol; then Alice again.
    assert chosen == [alices[0].job_id, bobs[0].job_id, carols[0].job_id, alices[1].job_id]


def test_nothing_starts_beyond_the_capacity() -> None:
    users = [uuid4() for _ in range(5)]
    running = [job(user, 0, state=AdmissionState.ACTIVE, limit=5) for user in users[:3]]
    waiting = [job(user, 1, limit=5) for user in users]
    assert len(choose_admissions([*running, *waiting], capacity=5)) == 2
    assert choose_admissions([*running, *waiting], capacity=3) == []


def test_a_user_at_the_limit_does_not_hold_back_others() -> None:
    alice, bob = uuid4(), uuid4()
    alices = [job(alice, 0, state=AdmissionState.ACTIVE), job(alice, 1)]
    bobs = [job(bob, 5)]
    assert choose_admissions([*alices, *bobs], capacity=10) == [bobs[0].job_id]
