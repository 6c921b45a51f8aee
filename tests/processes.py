"""The process table as /proc shows it: who descends from whom, and who is still alive.

A process is identified by its pid and start time, so a pid the kernel reused for
someone else does not count as a survivor. A zombie counts as gone: it has ended
and only waits for its parent (here often the sandbox's init) to collect it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessEntry:
    pid: int
    start_time: int
    state: str
    parent: int


def _entry(pid: int) -> ProcessEntry | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessEntry(
        pid=pid,
        state=fields[0],
        parent=int(fields[1]),
        start_time=int(fields[19]),
    )


def process_table() -> dict[int, ProcessEntry]:
    table = {}
    for path in PROC.iterdir():
        if path.name.isdigit() and (entry := _entry(int(path.name))) is not None:
            table[entry.pid] = entry
    return table


def descendants(root: int) -> set[ProcessEntry]:
    """Every live process below `root` (children, their children, ...)."""
    table = process_table()
    children: dict[int, list[ProcessEntry]] = {}
    for entry in table.values():
        children.setdefault(entry.parent, []).append(entry)
    found: set[ProcessEntry] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child.pid)
    return {entry for entry in found if entry.state != "Z"}


def process_tree(root: int) -> set[ProcessEntry]:
    """`root` and its descendants, those alive."""
    entry = _entry(root)
    return descendants(root) | ({entry} if entry is not None and entry.state != "Z" else set())


def survivors(processes: set[ProcessEntry]) -> set[ProcessEntry]:
    """Those of `processes` that still run."""
    alive = set()
    for process in processes:
        now = _entry(process.pid)
        if now is not None and now.start_time == process.start_time and now.state != "Z":
            alive.add(process)
    return alive


def processes_mentioning(text: str) -> set[int]:
    """Pids of live processes whose command line contains `text` (e.g. a state folder)."""
    found = set()
    needle = text.encode()
    for pid, entry in process_table().items():
        try:
            command_line = (PROC / str(pid) / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if needle in command_line and entry.state != "Z":
            found.add(pid)
    return found


def leader_states_at_group_kills(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the state of a group's leader each time `os.killpg` signals the group.

    "reaped" when the leader has no /proc entry left: its pid, the group's id, may then be
    anyone's, and the signal could reach a stranger. Otherwise its state letter ("Z" for a
    zombie not yet reaped).
    """
    states: list[str] = []
    kill_group = os.killpg

    def observe_leader_then_kill(group: int, signal_number: int) -> None:
        leader = _entry(group)
        states.append("reaped" if leader is None else leader.state)
        kill_group(group, signal_number)

    monkeypatch.setattr(os, "killpg", observe_leader_then_kill)
    return states
