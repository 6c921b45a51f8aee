"""`ckrv run --cloud`: submit a spec to Chakravarti Cloud; return at once, or follow its log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from cyclopts import Parameter

from ckrv.cli.client import CloudClient, new_idempotency_key
from ckrv.cli.commands.logs import follow_to_end, use_colour
from ckrv.cli.errors import UsageError
from ckrv.cli.git import GitError, current_branch, origin_url, push_state, push_warnings
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import Output
from ckrv.cli.render import status_text


def run(
    spec: Annotated[str | None, Parameter(name="SPEC")] = None,
    /,
    *,
    cloud: Annotated[bool, Parameter(negative="")] = False,
    repo: Annotated[str | None, Parameter(name="--repo")] = None,
    base_branch: Annotated[str | None, Parameter(name="--base-branch")] = None,
    credential: Annotated[str | None, Parameter(name="--credential")] = None,
    follow: Annotated[bool, Parameter(alias="-f", negative="")] = False,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Run a spec on Chakravarti Cloud; prints the job id and returns without waiting.

    With --follow it shows the job's log until the job ends, and exits 0 if it
    succeeded, 1 if it failed, timed out or was cancelled.

    Parameters
    ----------
    spec
        Path of the spec file (YAML).
    cloud
        Run on Chakravarti Cloud (required: this CLI runs jobs in the cloud only).
    repo
        Repository the job clones (https or ssh URL). Default: this checkout's `origin`.
    base_branch
        Branch the job starts from. Default: the current branch, which must be pushed.
    credential
        Name of a stored git credential, for a private repository.
    follow
        Follow the job's log until it ends (as `ckrv logs -f`).
    """
    out = options.output()
    if not cloud:
        raise UsageError(
            "this ckrv is the Chakravarti Cloud client: it runs specs on Chakravarti Cloud "
            "only, and local runs are not part of it",
            hint="Add --cloud to run the spec in the cloud: ckrv run --cloud SPEC",
        )
    if spec is None:
        raise UsageError(
            "which spec should run? Give the path of a spec file",
            hint="ckrv run --cloud path/to/spec.yaml",
        )
    spec_content = read_spec(Path(spec))
    cwd = Path.cwd()
    repo_url = repo if repo is not None else origin_url(cwd)
    branch = base_branch if base_branch is not None else current_branch(cwd)
    if not repo_url.strip():
        raise UsageError("--repo is empty")
    if not branch.strip():
        raise UsageError("--base-branch is empty")
    warn_if_not_pushed(out, cwd, repo_url, branch, repo_given=repo is not None)

    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        job = client.create_job(
            spec_content=spec_content,
            git_repo_url=repo_url,
            git_base_branch=branch,
            git_credential_name=credential,
            idempotency_key=new_idempotency_key(),
        )
        if follow:
            if out.json:
                # JSON Lines: the job, then its log lines.
                out.result(json.dumps(job.body, ensure_ascii=False))
            elif not out.quiet:
                out.result(f"Submitted job {job.id}; following its log (Ctrl-C stops following).")
            follow_to_end(client, job.id, out, tail=None, colour=use_colour(out, no_color=False))
            return
    if out.json:
        out.data(job.body)
        return
    if out.quiet:
        out.result(job.id)
        return
    out.result(f"Submitted job {job.id} ({status_text(job)})")
    out.result(f"  {job.git_repo_url} @ {job.git_base_branch}")
    out.info()
    out.info("Next:")
    out.info(f"  ckrv status {job.id}    # where it is")
    out.info(f"  ckrv logs -f {job.id}   # follow its logs")
    out.info(f"  ckrv pull {job.id}      # bring the result into a local branch once it succeeds")


def read_spec(path: Path) -> str:
    """The spec file's text; `UsageError` if it cannot be read or is not YAML."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"spec file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"spec path is a directory, not a file: {path}") from None
    except PermissionError:
        raise UsageError(f"spec file is not readable (permission denied): {path}") from None
    except UnicodeDecodeError:
        raise UsageError(f"spec file is not UTF-8 text: {path}") from None
    except OSError as error:
        raise UsageError(f"cannot read spec file {path}: {error.strerror or error}") from None
    if not content.strip():
        raise UsageError(f"spec file is empty: {path}")
    try:
        document: Any = yaml.safe_load(content)
    except yaml.YAMLError as error:
        where = ""
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(error, "problem", None) or "malformed"
        raise UsageError(f"spec file is not valid YAML{where}: {problem}: {path}") from None
    if not isinstance(document, dict):
        raise UsageError(f"spec file must hold a YAML mapping (keys and values): {path}")
    return content


def warn_if_not_pushed(
    out: Output, cwd: Path, repo_url: str, branch: str, *, repo_given: bool
) -> None:
    """Warn when the job would start from commits the remote does not have.

    Only meaningful when the job clones this checkout's own remote: with an explicit
    --repo naming another repository, the local branch says nothing about it.
    """
    if repo_given:
        try:
            if origin_url(cwd) != repo_url:
                return
        except UsageError:
            return
    try:
        state = push_state(cwd, branch)
    except GitError as error:
        out.debug(f"cannot tell whether branch '{branch}' is pushed: {error}")
        return
    if state is None:
        return
    for warning in push_warnings(state):
        out.warn(warning)
