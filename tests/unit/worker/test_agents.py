"""agents.yaml, choosing the agents for a spec, and reading their usage from their output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ckrv.services.worker.agents import (
    AgentCatalog,
    UsageMeter,
    agent_environment,
    load_agent_catalog,
)
from ckrv.services.worker.job_spec import JobSpec, read_job_spec
from ckrv.services.worker.outcome import JobFailure
from tests.unit.worker.worker_runs import make_job, spec_text

PROSE_SPEC = JobSpec(spec_id="demo", title="Add notes.", script=(), verify=())
SCRIPT_SPEC = JobSpec(spec_id="demo", title="Add notes.", script=("touch NOTES.md",), verify=())


@pytest.fixture(scope="module")
def catalog() -> AgentCatalog:
    return load_agent_catalog()


def test_the_shipped_catalog_has_the_three_clis_and_the_script_agent(
    catalog: AgentCatalog,
) -> None:
    assert set(catalog.agents) == {"claude", "gemini", "codex", "script"}
    assert catalog.agents["claude"].command[:2] == ("claude", "--print")
    assert "stream-json" in catalog.agents["claude"].command
    assert catalog.agents["gemini"].command[0] == "gemini"
    assert catalog.agents["codex"].command[:2] == ("codex", "exec")
    assert catalog.agents["script"].kind == "script"
    assert catalog.default_agent == "claude"


def test_without_a_choice_a_spec_with_a_script_gets_the_script_agent(
    catalog: AgentCatalog,
) -> None:
    assert [name for name, _ in catalog.select(None, SCRIPT_SPEC)] == ["script"]
    assert [name for name, _ in catalog.select(None, PROSE_SPEC)] == ["claude"]
    assert [name for name, _ in catalog.select(("codex", "gemini"), PROSE_SPEC)] == [
        "codex",
        "gemini",
    ]


def test_an_unknown_agent_or_a_script_agent_without_a_script_fails_the_job(
    catalog: AgentCatalog,
) -> None:
    with pytest.raises(JobFailure, match="there is no agent 'devin'; the agents are claude"):
        catalog.select(("devin",), PROSE_SPEC)
    with pytest.raises(JobFailure, match="runs the spec's `script:` list") as no_script:
        catalog.select(("script",), PROSE_SPEC)
    assert no_script.value.reason == "spec_invalid"


def test_the_prompt_holds_the_spec_and_the_branches(catalog: AgentCatalog) -> None:
    spec_content = spec_text(goal="Add {braces} to the docs.")
    job = make_job(git_repo_url="https://github.com/acme/app.git", spec_content=spec_content)

    prompt = catalog.render_prompt(job, read_job_spec(spec_content))

    assert spec_content in prompt
    assert "https://github.com/acme/app.git" in prompt
    assert job.feature_branch in prompt
    assert "do not commit" in prompt


def test_a_catalog_entry_must_match_its_kind(tmp_path: Path) -> None:
    catalog_file = tmp_path / "agents.yaml"
    catalog_file.write_text(
        "default_agent: x\nprompt: '{spec}'\nagents:\n  x: {title: X, kind: command}\n"
    )

    with pytest.raises(ValidationError, match="a command agent needs a `command`"):
        load_agent_catalog(catalog_file)


def claude_result(**fields: object) -> str:
    return json.dumps({"type": "result", "subtype": "success", **fields})


def test_claude_usage_comes_from_its_result_line() -> None:
    meter = UsageMeter("claude")
    meter.observe(json.dumps({"type": "assistant", "message": {"usage": {"input_tokens": 9}}}))
    meter.observe(
        claude_result(
            total_cost_usd=0.42,
            usage={
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 3000,
                "output_tokens": 400,
            },
        )
    )

    assert (meter.input_tokens, meter.output_tokens, meter.cost_usd) == (3210, 400, 0.42)


def test_gemini_usage_comes_from_its_result_stats() -> None:
    meter = UsageMeter("gemini")
    meter.observe(
        json.dumps(
            {
                "type": "result",
                "status": "success",
                "stats": {"total_tokens": 150, "input_tokens": 120, "output_tokens": 30},
            }
        )
    )

    assert (meter.input_tokens, meter.output_tokens, meter.cost_usd) == (120, 30, None)


def test_codex_usage_adds_up_its_turns() -> None:
    meter = UsageMeter("codex")
    for input_tokens, output_tokens in ((100, 10), (250, 40)):
        meter.observe(
            json.dumps(
                {
                    "type": "turn.completed",
                    "usage": {
                        "input_tokens": input_tokens,
                        "cached_input_tokens": 50,
                        "output_tokens": output_tokens,
                    },
                }
            )
        )

    assert (meter.input_tokens, meter.output_tokens) == (350, 50)


@pytest.mark.parametrize(
    "line",
    ["plain text", "{not json", "[1, 2]", claude_result(usage="many", total_cost_usd="free")],
)
def test_lines_without_usable_usage_change_nothing(line: str) -> None:
    meter = UsageMeter("claude")
    meter.observe(line)

    assert meter.cost_usd is None
    assert meter.input_tokens in {None, 0}


def test_an_agent_without_a_usage_format_reports_none() -> None:
    meter = UsageMeter(None)
    meter.observe(claude_result(total_cost_usd=1.0, usage={"input_tokens": 1}))

    assert (meter.input_tokens, meter.output_tokens, meter.cost_usd) == (None, None, None)


def test_agents_do_not_see_the_workers_own_settings() -> None:
    environment = agent_environment(
        {"PATH": "/usr/bin", "ANTHROPIC_API_KEY": "sk-1", "CKRV_INPUT_DIR": "/run/job"}
    )

    assert environment == {"PATH": "/usr/bin", "ANTHROPIC_API_KEY": "sk-1"}


def test_the_spec_gives_script_and_verify_lists() -> None:
    spec = read_job_spec(spec_text(["touch A"], verify="test -f A"))

    assert (spec.script, spec.verify) == (("touch A",), ("test -f A",))
    assert spec.title == "Change the sample repository."
    with pytest.raises(JobFailure, match="`script` must be a list of shell commands"):
        read_job_spec(spec_text(script=[1, 2]))  # type: ignore[list-item]
    with pytest.raises(JobFailure, match="spec needs a non-empty `overview` or `goal`") as bad:
        read_job_spec("id: x\n")
    assert bad.value.reason == "spec_invalid"
