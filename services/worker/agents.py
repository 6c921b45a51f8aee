"""The agent catalog (`agents.yaml`, shipped with the package) and running agents in the clone."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ckrv.services.worker.job_input import WorkerInput
from ckrv.services.worker.job_spec import JobSpec
from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.outcome import InfrastructureFailure, JobFailure
from ckrv.services.worker.processes import Deadline, run_streamed
from ckrv.services.worker.result import AgentRun

CATALOG_PATH = Path(__file__).with_name("agents.yaml")
SCRIPT_SHELL = "/bin/sh"
UsageFormat = Literal["claude", "gemini", "codex"]


class AgentDefinition(BaseModel):
    """One entry of agents.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(min_length=1, description="The agent's name for people.")
    kind: Literal["command", "script"] = Field(
        description="`command`: run `command` with the prompt on stdin; `script`: run the "
        "spec's `script:` commands."
    )
    command: tuple[str, ...] = Field(default=(), description="The command line of a command agent.")
    usage: UsageFormat | None = Field(
        default=None, description="How the agent reports tokens and cost in its output."
    )

    @model_validator(mode="after")
    def _command_matches_kind(self) -> AgentDefinition:
        if (self.kind == "command") != bool(self.command):
            raise ValueError("a command agent needs a `command`, and a script agent takes none")
        return self


class AgentCatalog(BaseModel):
    """agents.yaml: the agents, the default one, and the prompt they are given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_agent: str
    prompt: str = Field(
        description="Template with {repository}, {base_branch}, {feature_branch}, {spec_id}, "
        "{spec}."
    )
    agents: dict[str, AgentDefinition]

    @model_validator(mode="after")
    def _default_is_known(self) -> AgentCatalog:
        if self.default_agent not in self.agents:
            raise ValueError(f"default_agent {self.default_agent!r} is not in `agents`")
        return self

    def select(
        self, requested: tuple[str, ...] | None, spec: JobSpec
    ) -> list[tuple[str, AgentDefinition]]:
        """The agents to run, in order: those asked for, else `script` for a spec with a
        `script:` list, else the default agent. `JobFailure` for one that cannot run."""
        names = requested or (("script",) if spec.script else (self.default_agent,))
        selected = []
        for name in names:
            definition = self.agents.get(name)
            if definition is None:
                raise JobFailure(
                    "unknown_agent",
                    f"there is no agent {name!r}; the agents are {', '.join(sorted(self.agents))}",
                )
            if definition.kind == "script" and not spec.script:
                raise JobFailure(
                    "spec_invalid",
                    f"the {name} agent runs the spec's `script:` list, and the spec has none",
                )
            selected.append((name, definition))
        return selected

    def render_prompt(self, job: WorkerInput, spec: JobSpec) -> str:
        return self.prompt.format(
            repository=job.git_repo_url,
            base_branch=job.git_base_branch,
            feature_branch=job.feature_branch,
            spec_id=spec.spec_id,
            spec=job.spec_content,
        )


def load_agent_catalog(path: Path = CATALOG_PATH) -> AgentCatalog:
    return AgentCatalog.model_validate(yaml.safe_load(path.read_text()))


def _count(numbers: Mapping[str, Any], *keys: str) -> int:
    return sum(
        value
        for key in keys
        if isinstance(value := numbers.get(key), int) and not isinstance(value, bool)
    )


class UsageMeter:
    """Reads an agent's token counts and cost from the JSON lines it prints."""

    def __init__(self, usage_format: UsageFormat | None) -> None:
        self.usage_format = usage_format
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cost_usd: float | None = None

    def observe(self, line: str) -> None:
        if self.usage_format is None or not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if self.usage_format == "claude" and kind == "result":
            # The session's totals, in its last line.
            usage = event.get("usage")
            usage = usage if isinstance(usage, dict) else {}
            self.input_tokens = _count(
                usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
            )
            self.output_tokens = _count(usage, "output_tokens")
            cost = event.get("total_cost_usd")
            if isinstance(cost, int | float):
                self.cost_usd = float(cost)
        elif self.usage_format == "gemini" and kind == "result":
            stats = event.get("stats")
            if isinstance(stats, dict):
                self.input_tokens = _count(stats, "input_tokens")
                self.output_tokens = _count(stats, "output_tokens")
        elif self.usage_format == "codex" and kind == "turn.completed":
            # One per turn; `input_tokens` already counts the cached ones.
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.input_tokens = (self.input_tokens or 0) + _count(usage, "input_tokens")
                self.output_tokens = (self.output_tokens or 0) + _count(usage, "output_tokens")


def agent_environment(inherited: Mapping[str, str]) -> dict[str, str]:
    """What agents run with: the workload's environment, without the worker's own settings
    (which point at the job's input folder)."""
    return {name: value for name, value in inherited.items() if not name.startswith("CKRV_")}


@dataclass(frozen=True)
class AgentContext:
    """Where and how agents run for one job."""

    clone: Path
    prompt_file: Path
    environment: dict[str, str]
    deadline: Deadline
    log: JobLog

    def run_shell_commands(self, commands: tuple[str, ...], source: str) -> tuple[int, str] | None:
        """Run each command with /bin/sh in the clone, stopping at the first that fails.

        Returns that one's exit status and text, or None when all succeed.
        """
        for command in commands:
            self.log.write("info", f"$ {command}", source=source)
            status = run_streamed(
                [SCRIPT_SHELL, "-c", command],
                cwd=self.clone,
                env=self.environment,
                deadline=self.deadline,
                on_line=lambda line: self.log.write("info", line, source=source),
            )
            if status != 0:
                return status, command
        return None


def _run_command_agent(name: str, definition: AgentDefinition, context: AgentContext) -> UsageMeter:
    executable = definition.command[0]
    if shutil.which(executable, path=context.environment.get("PATH")) is None:
        raise InfrastructureFailure(
            "agent_unavailable",
            f"{definition.title} cannot run: `{executable}` is not installed in this workload",
        )
    meter = UsageMeter(definition.usage)

    def forward(line: str) -> None:
        meter.observe(line)
        context.log.agent_output(name, line)

    status = run_streamed(
        definition.command,
        cwd=context.clone,
        env=context.environment,
        deadline=context.deadline,
        on_line=forward,
        stdin_path=context.prompt_file,
    )
    if status != 0:
        raise JobFailure("agent_failed", f"{definition.title} exited with status {status}")
    return meter


def run_agent(
    name: str, definition: AgentDefinition, spec: JobSpec, context: AgentContext
) -> AgentRun:
    """Run one agent to its end in the clone; `JobFailure` (`agent_failed`) if it fails."""
    started = time.monotonic()
    if definition.kind == "script":
        failed = context.run_shell_commands(spec.script, source=f"agent:{name}")
        if failed is not None:
            status, command = failed
            raise JobFailure(
                "agent_failed", f"the script command `{command}` exited with status {status}"
            )
        meter = UsageMeter(None)
    else:
        meter = _run_command_agent(name, definition, context)
    return AgentRun(
        name=name,
        duration_seconds=round(time.monotonic() - started, 3),
        input_tokens=meter.input_tokens,
        output_tokens=meter.output_tokens,
        cost_usd=meter.cost_usd,
    )
