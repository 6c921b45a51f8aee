"""The waiting line of `ckrv cloud login` and friends: turns on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from ckrv.cli.output import Spinner


class Utf8Terminal(io.StringIO):
    encoding = "utf-8"


def test_on_a_terminal_the_line_turns_while_waiting_and_is_cleared_after() -> None:
    stream = Utf8Terminal()
    spinner = Spinner("Waiting for approval…", stream, enabled=True)

    for _ in range(3):  # each wait draws at least one frame, however slow the machine
        spinner.wait(0.01)
    drawn = stream.getvalue()
    frames = [part.split(" ", 1)[0] for part in drawn.split("\r") if part]
    assert len(frames) >= 3
    assert all(part.endswith("Waiting for approval…") for part in drawn.split("\r") if part)
    assert frames[:3] == ["⠋", "⠙", "⠹"]  # it turns: a new frame each time

    spinner.clear()
    assert stream.getvalue() == drawn + "\r\033[K"


def test_a_stream_that_is_not_utf8_gets_ascii_frames() -> None:
    stream = io.StringIO()  # no encoding: assume the least
    spinner = Spinner("Waiting", stream, enabled=True)
    spinner.wait(0.01)
    spinner.wait(0.01)
    assert stream.getvalue().startswith("\r| Waiting\r/ Waiting")


def test_elsewhere_it_waits_silently_and_clearing_writes_nothing() -> None:
    stream = Utf8Terminal()
    spinner = Spinner("Waiting", stream, enabled=False)
    spinner.wait(0.05)
    spinner.clear()
    assert stream.getvalue() == ""
