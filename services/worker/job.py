"""One run of `ckrv-worker run`: clone, plan, execute the agents, verify and package, upload.

The phases, each announced by a phase marker line (see `joblog`):
- `cloning`: the base branch alone is cloned with the job's credential, and the feature
  branch `ckrv/<short id>` created from it; the credential's files are deleted right after;
- `planning`: the spec is read, the agents chosen (`agents.yaml`) and the prompt written;
- `executing`: the agents run one after another in the clone;
- `verifying`: the spec's `verify:` commands run, the changes are committed, and
  `diff.patch`, `repo.bundle` and `result.json` are written;
- `uploading`: the three are PUT to their presigned URLs, `result.json` last.

The final line's `reason`, by exit code:
- 1 (job failed): `clone_refused` (a URL scheme the job may not use), `clone_failed`,
  `credential_mismatch`, `branch_not_found`, `spec_invalid`, `unknown_agent`, `agent_failed`,
  `branch_changed`, `timeout`;
- 2 (infrastructure): `input_unreadable`, `input_invalid`, `workspace_in_use`,
  `agent_unavailable`, `git_failed`, `upload_failed`, `internal_error`;
- 3 (verification failed): `verification_failed`;
- 143 (SIGTERM): `terminated`.

`time_limit_seconds` bounds everything up to the upload: at the limit the running command's
process group is killed and nothing is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ckrv.services.worker.agents import (
    AgentContext,
    agent_environment,
    load_agent_catalog,
    run_agent,
)
from ckrv.services.worker.clone_access import clone_access
from ckrv.services.worker.git import DiffStats, Git, Repository
from ckrv.services.worker.job_input import (
    ARTIFACT_NAMES,
    INPUT_DIR_ENV,
    WORKSPACE_ENV,
    WorkerInput,
    read_worker_input,
)
from ckrv.services.worker.job_spec import JobSpec, read_job_spec
from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.outcome import (
    ExitCode,
    InfrastructureFailure,
    JobFailure,
    Terminated,
    VerificationFailure,
    WorkerError,
)
from ckrv.services.worker.processes import Deadline
from ckrv.services.worker.result import AgentRun, ArtifactDigest, JobResult
from ckrv.services.worker.upload import upload_files


def summarize(agent_names: Sequence[str], stats: DiffStats, feature_branch: str) -> str:
    """One sentence on what the agents did, for result.json, the log and the job's events."""
    who = ", ".join(agent_names)
    if not stats.files_changed:
        return f"No changes: {who} left the repository as it was, so the diff is empty."
    count = len(stats.files_changed)
    files = "1 file" if count == 1 else f"{count} files"
    return f"{who} changed {files} (+{stats.insertions} -{stats.deletions}) on {feature_branch}."


def job_metrics(duration_seconds: float, runs: Sequence[AgentRun]) -> dict[str, int | float]:
    """The run's duration, and the agents' token counts and cost summed where reported."""
    metrics: dict[str, int | float] = {"duration_seconds": round(duration_seconds, 3)}
    reported: dict[str, list[int | float]] = {
        "input_tokens": [run.input_tokens for run in runs if run.input_tokens is not None],
        "output_tokens": [run.output_tokens for run in runs if run.output_tokens is not None],
        "cost_usd": [run.cost_usd for run in runs if run.cost_usd is not None],
    }
    for name, values in reported.items():
        if values:
            metrics[name] = sum(values)
    return metrics


def commit_message(job: WorkerInput, spec: JobSpec, agent_names: Sequence[str]) -> str:
    return (
        f"{spec.spec_id}: {spec.title}\n\n"
        f"Made by {', '.join(agent_names)} in Chakravarti Cloud job {job.job_id} "
        f"(attempt {job.attempt})."
    )


def file_digest(path: Path) -> ArtifactDigest:
    with path.open("rb") as file:
        sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    return ArtifactDigest(size_bytes=path.stat().st_size, sha256=sha256)


@dataclass(frozen=True)
class Workspace:
    """The worker's files in `$CKRV_WORKSPACE`, which may hold others' too: the local runner
    makes it the agents' HOME as well."""

    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def access(self) -> Path:
        """The credential's files, for as long as the clone takes."""
        return self.root / "access"

    @property
    def git_config(self) -> Path:
        return self.root / "gitconfig"

    @property
    def prompt(self) -> Path:
        return self.root / "prompt.md"

    @property
    def artifacts(self) -> Path:
        """diff.patch, repo.bundle and result.json."""
        return self.root / "artifacts"

    def in_use(self) -> list[Path]:
        """Those of the worker's paths that exist already."""
        paths = (self.repo, self.access, self.git_config, self.prompt, self.artifacts)
        return [path for path in paths if path.exists()]


def run_job(
    job: WorkerInput, credential: str | None, workspace: Workspace, log: JobLog
) -> JobResult:
    """Do the job in `workspace` and upload its result; a `WorkerError` if it fails."""
    started = time.monotonic()
    deadline = Deadline(job.time_limit_seconds)
    git = Git(workspace.git_config, deadline)

    log.enter_phase("cloning", f"cloning {job.git_repo_url} at {job.git_base_branch}")
    with clone_access(job, credential, workspace.access) as access:
        repository = git.clone(
            job.git_repo_url,
            job.git_base_branch,
            workspace.repo,
            access=access,
            allow_local=job.allow_local_repository,
            on_retry=log.warning,
        )
    base_commit = repository.head()
    repository.create_branch(job.feature_branch)
    log.info(f"{job.git_base_branch} is at {base_commit}; working on {job.feature_branch}")

    log.enter_phase("planning", "reading the spec and choosing the agents")
    spec = read_job_spec(job.spec_content)
    catalog = load_agent_catalog()
    agents = catalog.select(job.agents, spec)
    agent_names = [name for name, _ in agents]
    workspace.prompt.write_text(catalog.render_prompt(job, spec))
    context = AgentContext(
        clone=repository.path,
        prompt_file=workspace.prompt,
        environment=agent_environment(os.environ),
        deadline=deadline,
        log=log,
    )
    log.info(f"agents: {', '.join(agent_names)}; verification commands: {len(spec.verify)}")

    log.enter_phase("executing", f"running {', '.join(agent_names)}")
    runs = []
    for name, definition in agents:
        log.info(f"running {name} ({definition.title})")
        runs.append(run_agent(name, definition, spec, context))

    log.enter_phase("verifying", "checking and committing the result")
    failed = context.run_shell_commands(spec.verify, source="worker")
    if failed is not None:
        status, command = failed
        raise VerificationFailure(
            "verification_failed",
            f"the verification command `{command}` exited with status {status}",
        )
    branch = repository.current_branch()
    if branch != job.feature_branch:
        raise JobFailure(
            "branch_changed",
            f"the agents left {branch or 'a detached HEAD'} checked out "
            f"instead of {job.feature_branch}",
        )
    if not repository.commit_all(commit_message(job, spec, agent_names)):
        log.info("the working tree has no changes to commit")
    result = package_result(
        job,
        spec,
        repository,
        base_commit=base_commit,
        runs=runs,
        artifacts=workspace.artifacts,
        started=started,
    )
    # A result finished after the limit is discarded like any other work past it.
    deadline.remaining()

    log.enter_phase("uploading", "uploading diff.patch, repo.bundle and result.json")
    files = {name: workspace.artifacts / name for name in ARTIFACT_NAMES}
    upload_files(job.upload_urls, files, log)
    return result


def package_result(
    job: WorkerInput,
    spec: JobSpec,
    repository: Repository,
    *,
    base_commit: str,
    runs: Sequence[AgentRun],
    artifacts: Path,
    started: float,
) -> JobResult:
    """Write diff.patch, repo.bundle and result.json (which describes the other two) to
    `artifacts`, from the committed feature branch; `started` is the run's start on the
    monotonic clock."""
    head_commit = repository.head()
    stats = repository.diff_stats(base_commit, head_commit)
    artifacts.mkdir()
    repository.write_diff(base_commit, head_commit, artifacts / "diff.patch")
    repository.write_bundle(job.feature_branch, artifacts / "repo.bundle")
    result = JobResult(
        job_id=job.job_id,
        attempt=job.attempt,
        spec_id=spec.spec_id,
        summary=summarize([run.name for run in runs], stats, job.feature_branch),
        base_branch=job.git_base_branch,
        base_commit=base_commit,
        feature_branch=job.feature_branch,
        head_commit=head_commit,
        files_changed=stats.files_changed,
        insertions=stats.insertions,
        deletions=stats.deletions,
        agents=tuple(runs),
        metrics=job_metrics(time.monotonic() - started, runs),
        artifacts={name: file_digest(artifacts / name) for name in ("diff.patch", "repo.bundle")},
    )
    (artifacts / "result.json").write_text(result.model_dump_json(indent=2))
    return result


@contextmanager
def job_workspace(configured: str | None) -> Iterator[Workspace]:
    """The folder named by `$CKRV_WORKSPACE` (created if missing, kept afterwards), or else a
    fresh temporary one, deleted afterwards."""
    if configured:
        workspace = Workspace(Path(configured))
        workspace.root.mkdir(parents=True, exist_ok=True)
        if in_use := workspace.in_use():
            raise InfrastructureFailure(
                "workspace_in_use",
                f"the workspace {workspace.root} has {', '.join(path.name for path in in_use)} "
                "already; each run needs a fresh one",
            )
        yield workspace
        return
    root = Path(tempfile.mkdtemp(prefix="ckrv-worker-"))
    try:
        yield Workspace(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_worker(log: JobLog, environment: Mapping[str, str] = os.environ) -> ExitCode:
    """Read the input, run the job, end with the `finished` line; the process's exit code."""
    try:
        input_dir = environment.get(INPUT_DIR_ENV)
        if not input_dir:
            raise InfrastructureFailure(
                "input_unreadable", f"{INPUT_DIR_ENV} does not name the job's input folder"
            )
        job, credential = read_worker_input(Path(input_dir))
        if credential is not None:
            log.hide(credential)
        with job_workspace(environment.get(WORKSPACE_ENV)) as workspace:
            result = run_job(job, credential, workspace, log)
    except WorkerError as error:
        log.finished(error.exit_code, error.reason, error.message)
        return error.exit_code
    except (Terminated, KeyboardInterrupt):
        log.finished(
            ExitCode.TERMINATED, "terminated", "stopped by a signal before the job finished"
        )
        return ExitCode.TERMINATED
    except Exception as error:
        # A bug or a broken machine (a full disk): the details go to stderr, for the operator.
        traceback.print_exc()
        log.finished(
            ExitCode.INFRASTRUCTURE_ERROR, "internal_error", f"{type(error).__name__}: {error}"
        )
        return ExitCode.INFRASTRUCTURE_ERROR
    log.finished(ExitCode.SUCCEEDED, None, result.summary)
    return ExitCode.SUCCEEDED
