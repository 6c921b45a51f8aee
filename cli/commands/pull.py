"""`ckrv pull <id>`: a successful job's result into a local branch; `ckrv diff <id>`: its diff.

`pull` fetches the job's `repo.bundle` into the branch `ckrv/<short id>` without
touching the working tree, and on request also applies the job's patch to the
working tree (`--apply`), writes it to a file (`--output`) or checks the branch
out in a new worktree (`--worktree`). Every download is checked against the
size and SHA-256 the service lists for it.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter
from pydantic import ValidationError

from ckrv.cli.client import CloudClient
from ckrv.cli.commands.jobs import JobRef, parse_job_ref, resolve_job_id
from ckrv.cli.errors import EXIT_SYSTEM_ERROR, CliError, CloudError, UsageError
from ckrv.cli.git import GitError
from ckrv.cli.models import Artifact, ArtifactList, Job, JobResultFile
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import Output
from ckrv.cli.render import format_time, status_text
from ckrv.cli.result_checkout import (
    PatchDoesNotApply,
    add_worktree,
    apply_patch,
    branch_exists,
    diff_stat,
    fetch_bundle,
    has_uncommitted_changes,
    patch_stat,
    repository_root,
)

BUNDLE = "repo.bundle"
PATCH = "diff.patch"
RESULT = "result.json"
# How an unsuccessful end reads after "job <id>".
_ENDED = {"failed": "failed", "timeout": "timed out", "cancelled": "was cancelled"}


def pull(
    job_id: JobRef,
    /,
    *,
    apply: Annotated[bool, Parameter(negative="")] = False,
    force: Annotated[bool, Parameter(negative="")] = False,
    output: Annotated[Path | None, Parameter(name=["--output", "-o"])] = None,
    worktree: Path | None = None,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Bring a successful job's result into this repository, as a branch of its own.

    The branch, ckrv/ and the job id's first 8 characters, is fetched from the job's
    git bundle; your working tree and current branch are left as they are, unless
    --apply asks for the changes there too.

    Parameters
    ----------
    apply
        Also apply the job's changes to the working tree and index (a 3-way merge); if
        any of them conflicts with your files, nothing is changed.
    force
        With --apply: apply even though tracked files have uncommitted changes.
    output
        Also write the job's patch to this file.
    worktree
        Also check the result branch out in a new git worktree at this path.
    """
    out = options.output()
    ref = parse_job_ref(job_id)
    root = checked_repository(apply=apply, force=force, output=output, worktree=worktree)
    with (
        CloudClient.from_environment(profile=options.profile, log=out.debug) as client,
        tempfile.TemporaryDirectory(prefix="ckrv-pull-") as scratch,
    ):
        pulled = fetch(
            client,
            root,
            resolve_job_id(client, ref),
            Path(scratch),
            with_patch=apply or output is not None,
        )
        if out.quiet:
            out.result(pulled.branch)
        elif not out.json:
            out.result(
                f"Fetched job {pulled.job_id} into branch {pulled.branch} ({pulled.commit[:12]})."
            )
            out.result(pulled.stat or "The job changed no files.")
        if output is not None and pulled.patch is not None:
            write_file(output, pulled.patch.read_bytes())
            pulled.patch_file = output
            out.info(f"Wrote the patch to {output}.")
        if worktree is not None:
            try:
                add_worktree(root, worktree, pulled.branch)
            except GitError as error:
                raise CliError(f"cannot add a worktree at {worktree}: {error}") from error
            pulled.worktree = worktree
            out.info(f"Checked branch {pulled.branch} out in {worktree}.")
        if apply and pulled.patch is not None and pulled.stat:
            apply_to_working_tree(root, pulled.patch, pulled.branch)
            pulled.applied = True
            out.info("Applied the changes to your working tree, staged (see git diff --cached).")
    if out.json:
        out.data(pulled.report())
    elif pulled.stat:
        print_next_steps(out, pulled)


@dataclass
class Pulled:
    """A job's result as `pull` brought it in."""

    job_id: str
    result: JobResultFile
    commit: str
    # `git diff --stat` of the job's changes; empty when it changed nothing.
    stat: str
    # The downloaded patch, while the command runs; None unless asked for.
    patch: Path | None
    patch_file: Path | None = None
    worktree: Path | None = None
    applied: bool = False

    @property
    def branch(self) -> str:
        return self.result.feature_branch

    def report(self) -> dict[str, Any]:
        """What `--json` prints."""
        return {
            "job_id": self.job_id,
            "branch": self.branch,
            "commit": self.commit,
            "base_commit": self.result.base_commit,
            "files_changed": self.result.files_changed,
            "insertions": self.result.insertions,
            "deletions": self.result.deletions,
            "patch_file": str(self.patch_file) if self.patch_file else None,
            "worktree": str(self.worktree) if self.worktree else None,
            "applied": self.applied,
        }


def checked_repository(
    *, apply: bool, force: bool, output: Path | None, worktree: Path | None
) -> Path:
    """The repository to pull into, once the options are known to fit it: before any download."""
    if force and not apply:
        raise UsageError("--force only goes with --apply")
    root = repository_root(Path.cwd())
    if apply and not force and has_uncommitted_changes(root):
        raise UsageError(
            "your working tree has uncommitted changes, and --apply would mix the job's "
            "changes into them",
            hint="Commit or stash them first, or pass --force to apply anyway "
            "(nothing is changed if the two conflict).",
        )
    if worktree is not None and worktree.exists():
        raise UsageError(f"{worktree} already exists", hint="Give --worktree a new path.")
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: {output.parent} is not a folder")
    return root


def fetch(
    client: CloudClient, root: Path, job_id: str, scratch: Path, *, with_patch: bool
) -> Pulled:
    """The job's branch fetched into the repository at `root`, and its patch downloaded to
    `scratch` if asked for; a `CliError` unless the job succeeded and its results are there."""
    require_success(client.get_job(job_id))
    artifacts = stored_results(client, job_id)
    result = read_result(client, job_id, artifacts)
    bundle = scratch / BUNDLE
    download(client, job_id, artifacts, BUNDLE, bundle)
    commit = fetch_result_branch(root, bundle, result.feature_branch)
    patch = None
    if with_patch:
        patch = scratch / PATCH
        download(client, job_id, artifacts, PATCH, patch)
    changed = result.head_commit != result.base_commit
    stat = diff_stat(root, result.base_commit, result.head_commit) if changed else ""
    return Pulled(job_id, result, commit, stat, patch)


def print_next_steps(out: Output, pulled: Pulled) -> None:
    if pulled.applied:
        steps = [("git commit", "commit the applied changes")]
    else:
        steps = [
            (f"git diff HEAD...{pulled.branch}", "review the changes"),
            (f"git merge {pulled.branch}", "merge them into your current branch"),
        ]
    width = max(len(command) for command, _ in steps)
    out.info()
    out.info("Next:")
    for command, purpose in steps:
        out.info(f"  {command.ljust(width)}  # {purpose}")


def diff(
    job_id: JobRef,
    /,
    *,
    stat: Annotated[bool, Parameter(negative="")] = False,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Print a successful job's diff, as `git apply` takes it (`ckrv diff ID | git apply`).

    Parameters
    ----------
    stat
        Print the diffstat (files, lines added and removed) instead of the diff.
    """
    out = options.output()
    ref = parse_job_ref(job_id)
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        full_id = resolve_job_id(client, ref)
        try:
            patch = client.job_diff(full_id)
        except CloudError as error:
            raise results_error(error, full_id) from error
    if not stat:
        if out.json:
            out.data({"job_id": full_id, "diff": patch.decode("utf-8", errors="replace")})
        else:
            write_stdout(out, patch)
        return
    if not patch.strip():
        if out.json:
            out.data({"job_id": full_id, "files": []})
        else:
            out.result("The job changed no files.")
        return
    with tempfile.TemporaryDirectory(prefix="ckrv-diff-") as scratch:
        patch_file = Path(scratch) / PATCH
        patch_file.write_bytes(patch)
        summary = patch_stat(Path.cwd(), patch_file, numeric=out.json)
    if out.json:
        out.data({"job_id": full_id, "files": numstat_files(summary)})
    else:
        out.result(summary)


def require_success(job: Job) -> None:
    """A `CliError` (exit 1) unless the job succeeded: only then has it a result to pull."""
    if job.status == "succeeded":
        return
    if not job.is_terminal:
        raise CliError(
            f"job {job.id} is {status_text(job)}: there is no result to pull yet",
            code="job_not_finished",
            hint=f"Follow it to its end: ckrv logs -f {job.id}",
        )
    ended = _ENDED.get(job.status, job.status)
    reason = f": {job.error_message}" if job.error_message else ""
    raise CliError(
        f"no successful output: job {job.id} {ended}{reason}",
        code="no_successful_output",
        hint=f"See what happened: ckrv logs {job.id}",
    )


def results_error(error: CloudError, job_id: str) -> CliError:
    """The service's refusal to hand out results, in the user's terms."""
    if error.code == "gone":
        expired_at = error.extra.get("expired_at")
        when = _readable(expired_at) if isinstance(expired_at, str) else "some time ago"
        return CliError(
            f"the results of job {job_id} expired on {when}",
            code="expired",
            hint="Results are kept for 7 days after a job ends; run the spec again for new ones.",
        )
    if error.code in ("no_successful_output", "job_not_finished"):
        error.hint = error.hint or f"See its log: ckrv logs {job_id}"
    return error


def _readable(moment: str) -> str:
    try:
        return format_time(datetime.fromisoformat(moment))
    except ValueError:
        return moment


def stored_results(client: CloudClient, job_id: str) -> ArtifactList:
    try:
        return client.list_artifacts(job_id)
    except CloudError as error:
        raise results_error(error, job_id) from error


def download(
    client: CloudClient, job_id: str, artifacts: ArtifactList, name: str, destination: Path
) -> None:
    """Download the result `name` to `destination`, checked against its listed size and digest."""
    artifact = _listed(artifacts, job_id, name)
    with destination.open("wb") as file:
        try:
            downloaded = client.download_artifact(job_id, name, file)
        except CloudError as error:
            raise results_error(error, job_id) from error
    if (downloaded.size, downloaded.sha256) != (artifact.size, artifact.sha256):
        raise CloudError(
            "corrupt_download",
            f"{name} of job {job_id} arrived damaged: {downloaded.size} bytes with SHA-256 "
            f"{downloaded.sha256}, where {artifact.size} bytes with {artifact.sha256} were stored",
            hint="Run the command again.",
        )


def read_result(client: CloudClient, job_id: str, artifacts: ArtifactList) -> JobResultFile:
    """The job's `result.json`: where its branch starts and ends."""
    buffer = io.BytesIO()
    artifact = _listed(artifacts, job_id, RESULT)
    try:
        downloaded = client.download_artifact(job_id, RESULT, buffer)
    except CloudError as error:
        raise results_error(error, job_id) from error
    try:
        if downloaded.sha256 != artifact.sha256:
            raise ValueError(f"its SHA-256 is {downloaded.sha256}, not {artifact.sha256}")
        return JobResultFile.from_body(json.loads(buffer.getvalue()))
    except (ValueError, ValidationError) as error:
        raise CloudError(
            "bad_response", f"{RESULT} of job {job_id} is unreadable: {error}"
        ) from error


def _listed(artifacts: ArtifactList, job_id: str, name: str) -> Artifact:
    artifact = artifacts.named(name)
    if artifact is None:
        raise CloudError(
            "bad_response", f"job {job_id} succeeded, yet the service lists no {name} of it"
        )
    return artifact


def fetch_result_branch(root: Path, bundle: Path, branch: str) -> str:
    """Fetch the job's branch from its bundle into the local branch of that name."""
    existed = branch_exists(root, branch)
    try:
        return fetch_bundle(root, bundle, branch)
    except GitError as error:
        if existed:
            raise CliError(
                f"branch {branch} exists here, and the job's result cannot replace it: {error}",
                code="branch_exists",
                hint=f"Rename yours (git branch -m {branch} {branch}-mine) and pull again.",
            ) from error
        raise CliError(
            f"fetching the job's result into branch {branch} failed: {error}",
            code="git_failed",
            exit_code=EXIT_SYSTEM_ERROR,
        ) from error


def apply_to_working_tree(root: Path, patch: Path, branch: str) -> None:
    try:
        apply_patch(root, patch)
    except PatchDoesNotApply as error:
        where = f" in {', '.join(error.conflicted)}" if error.conflicted else f" ({error})"
        raise CliError(
            f"the job's changes conflict with your working tree{where}; nothing was changed",
            code="apply_conflict",
            hint=f"The result is in branch {branch}: merge it (git merge {branch}) to resolve "
            "the conflicts there, or make the files match and pull again with --apply.",
        ) from error


def write_file(path: Path, content: bytes) -> None:
    """Write `content` to `path` whole or not at all (a new file renamed into place)."""
    staged: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as file:
            staged = Path(file.name)
            file.write(content)
        staged.replace(path)
    except OSError as error:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from error


def write_stdout(out: Output, content: bytes) -> None:
    """`content` on stdout byte for byte: a patch need not be UTF-8."""
    stream = out.stdout
    stream.flush()
    binary = getattr(stream, "buffer", None)
    if binary is None:
        stream.write(content.decode("utf-8", errors="replace"))
        return
    binary.write(content)
    binary.flush()


def numstat_files(numstat: str) -> list[dict[str, Any]]:
    """`git apply --numstat` lines as objects; a binary file's counts are null."""
    files = []
    for line in numstat.splitlines():
        added, removed, path = line.split("\t", 2)
        files.append(
            {
                "path": path,
                "insertions": int(added) if added != "-" else None,
                "deletions": int(removed) if removed != "-" else None,
            }
        )
    return files
