"""Stack.run() in-process: a part that fails to start takes everything down, with its log."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ckrv.services.stack.errors import StackError
from ckrv.services.stack.launcher import Stack
from tests.processes import processes_mentioning
from tests.stack_settings import free_port_settings

pytestmark = pytest.mark.integration


async def test_a_service_that_cannot_start_stops_the_whole_stack(server_tmp_path: Path) -> None:
    settings = free_port_settings(server_tmp_path / "state", services=("no-such-service",))
    output = io.StringIO()
    with pytest.raises(StackError) as failure:
        await Stack(settings, out=output).run()
    message = str(failure.value)
    assert message.startswith("no-such-service exited with code")
    assert "services/no-such-service.log" in message
    assert "ready in" in output.getvalue()
    assert processes_mentioning(str(server_tmp_path)) == set()
    assert not (server_tmp_path / "state" / "stack.json").exists()
