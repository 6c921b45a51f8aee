"""Commands in process groups of their own: their output line by line, and nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckrv.services.worker.outcome import TimeLimitExceeded
from ckrv.services.worker.processes import Deadline, run_captured, run_streamed
from tests.processes import leader_states_at_group_kills
from tests.unit.worker.worker_runs import gone

SLEEP = "sleep 600"


def streamed(script: str, folder: Path, deadline: Deadline | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = run_streamed(
        ["/bin/sh", "-c", script],
        cwd=folder,
        env=dict(os.environ),
        deadline=deadline or Deadline(60),
        on_line=lines.append,
    )
    return status, lines


def test_output_arrives_as_lines_stdout_and_stderr_together(tmp_path: Path) -> None:
    status, lines = streamed(
        "printf 'one\\r\\ntwo\\n'; echo oops >&2; printf 'last'; exit 3", tmp_path
    )

    assert status == 3
    assert lines == ["one", "two", "oops", "last"]


def test_text_that_is_not_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    _, lines = streamed("printf 'caf\\351\\n'", tmp_path)

    assert lines == ["caf\N{REPLACEMENT CHARACTER}"]


def test_what_a_command_leaves_running_is_stopped_when_it_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "leftover.pid"

    status, lines = streamed(f"{SLEEP} & echo $! > {pid_file}; echo done", tmp_path)

    assert (status, lines) == (0, ["done"])
    assert gone(int(pid_file.read_text()))


def test_at_the_deadline_the_whole_group_is_killed(tmp_path: Path) -> None:
    background, leader = tmp_path / "background.pid", tmp_path / "leader.pid"

    with pytest.raises(TimeLimitExceeded) as raised:
        streamed(
            f"{SLEEP} & echo $! > {background}; echo $$ > {leader}; exec {SLEEP}",
            tmp_path,
            Deadline(1),
        )

    assert raised.value.reason == "timeout"
    assert gone(int(background.read_text()))
    assert gone(int(leader.read_text()))


def test_captured_commands_keep_stdout_and_stderr_apart(tmp_path: Path) -> None:
    completed = run_captured(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 2"],
        cwd=tmp_path,
        env=dict(os.environ),
        deadline=Deadline(60),
    )

    assert (completed.returncode, completed.stdout, completed.stderr) == (2, "out\n", "err\n")


def test_a_captured_command_past_the_deadline_is_killed(tmp_path: Path) -> None:
    leader = tmp_path / "leader.pid"

    with pytest.raises(TimeLimitExceeded):
        run_captured(
            ["/bin/sh", "-c", f"echo $$ > {leader}; exec {SLEEP}"],
            cwd=tmp_path,
            env=dict(os.environ),
            deadline=Deadline(1),
        )

    assert gone(int(leader.read_text()))


def test_a_captured_command_returns_when_it_exits_with_its_leftovers_stopped(
    tmp_path: Path,
) -> None:
    # The leftover shares the command's output pipes: it must not hold the call open.
    completed = run_captured(
        ["/bin/sh", "-c", f"{SLEEP} & echo $!"],
        cwd=tmp_path,
        env=dict(os.environ),
        deadline=Deadline(60),
    )

    assert completed.returncode == 0
    assert gone(int(completed.stdout))


@pytest.mark.parametrize("captured", [True, False], ids=["captured", "streamed"])
def test_a_group_is_killed_while_its_leader_is_unreaped_so_its_id_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured: bool
) -> None:
    leader_states = leader_states_at_group_kills(monkeypatch)
    script = f"{SLEEP} & exit 0"
    if captured:
        run_captured(
            ["/bin/sh", "-c", script], cwd=tmp_path, env=dict(os.environ), deadline=Deadline(60)
        )
    else:
        streamed(script, tmp_path)

    assert leader_states
    assert set(leader_states) == {"Z"}
