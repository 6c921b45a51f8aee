"""`ckrv cloud credentials add | list | remove`: the git credentials jobs clone private repos with.

Not the CLI's own login (that is `ckrv.cli.credentials`): these are stored by the
service, encrypted, and a job names one with `ckrv run --credential NAME`. A value
comes from a file, from stdin or from a hidden prompt, never from the command
line, where the shell's history and `ps` would keep it.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TextIO

import cyclopts
from cyclopts import Parameter

from ckrv.cli.client import CloudClient
from ckrv.cli.errors import UsageError
from ckrv.cli.models import GitCredential
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.render import NONE, format_age, format_table

Provider = Literal["github", "gitlab", "bitbucket", "generic"]
CredentialType = Literal["pat", "deploy_key"]

credentials = cyclopts.App(
    name="credentials",
    help="Store the git credentials jobs clone private repositories with, list and remove them.",
)


@credentials.command
def add(
    *,
    name: str,
    provider: Provider,
    type_: Annotated[CredentialType, Parameter(name="--type")] = "pat",
    from_file: Annotated[Path | None, Parameter(name="--from-file")] = None,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Store a git credential: a personal access token, or a deploy key's private key.

    The value is read from --from-file, else from stdin when it is not a terminal,
    else asked for without echo. It is sent once and cannot be shown again.

    Parameters
    ----------
    name
        Name jobs use for it (`ckrv run --credential NAME`): lower-case letters, digits, `-`.
    provider
        Where the repositories are hosted.
    type_
        `pat` (a token, used over https) or `deploy_key` (a private SSH key, used over ssh).
    from_file
        File holding the value, e.g. the private key file of a deploy key.
    """
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        # Signed in first, so nobody types a secret only to learn that they are not.
        value = read_value(type_, from_file, sys.stdin)
        credential = client.add_credential(
            name=name, provider=provider, credential_type=type_, value=value
        )
    if out.json:
        out.data(credential.body)
        return
    if out.quiet:
        out.result(credential.name)
        return
    out.result(f"Stored git credential '{credential.name}' ({describe(credential)}).")
    out.info(f"Jobs use it with: ckrv run --cloud SPEC --credential {credential.name}")


@credentials.command(name="list")
def list_credentials(*, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """List your git credentials (never their values)."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        listing = client.list_credentials()
    if out.json:
        out.data(listing.body)
        return
    listed = listing.credentials
    if out.quiet:
        for credential in listed:
            out.result(credential.name)
        return
    if not listed:
        out.result(
            "No git credentials yet. Add one: ckrv cloud credentials add --name NAME "
            "--provider github < token.txt"
        )
        return
    out.result(credentials_table(listed, now=datetime.now(UTC)))


@credentials.command
def remove(
    name: Annotated[str, Parameter(name="NAME")], /, *, options: CommonOptions = DEFAULT_OPTIONS
) -> None:
    """Remove a git credential; jobs naming it are refused from then on."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        client.remove_credential(name)
    if out.json:
        out.data({"name": name, "removed": True})
    elif not out.quiet:
        out.result(f"Removed git credential '{name}'.")


def read_value(
    credential_type: CredentialType, from_file: Path | None, stdin: TextIO | None
) -> str:
    """The credential's value from the file, stdin, or a hidden prompt on a terminal."""
    deploy_key = credential_type == "deploy_key"
    if from_file is not None:
        try:
            text = from_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{from_file} is not UTF-8 text") from None
        except OSError as error:
            raise UsageError(f"cannot read {from_file}: {error.strerror or error}") from None
        source = str(from_file)
    elif stdin is not None and stdin.isatty():
        if deploy_key:
            raise UsageError(
                "a deploy key spans several lines and cannot be typed at a prompt",
                hint="Give its private key file: --from-file ~/.ssh/deploy_key",
            )
        text = getpass.getpass("Token (input hidden): ")
        source = "the prompt"
    else:
        text = stdin.read() if stdin is not None else ""
        source = "stdin"
    if not text.strip():
        raise UsageError(
            f"no credential value: {source} gave nothing",
            hint="Give the value in a file (--from-file FILE), pipe it on stdin, "
            "or run the command in a terminal to be asked for a token.",
        )
    # A token read from a file or a pipe ends with a newline that is not part of it.
    return text if deploy_key else text.strip()


def describe(credential: GitCredential) -> str:
    kind = "deploy key" if credential.credential_type == "deploy_key" else "token"
    return f"{credential.provider} {kind}"


def credentials_table(listed: Sequence[GitCredential], now: datetime) -> str:
    headers = ("NAME", "PROVIDER", "TYPE", "CREATED", "LAST USED")
    rows = [
        (
            credential.name,
            credential.provider,
            credential.credential_type,
            format_age(credential.created_at, now),
            format_age(credential.last_used_at, now) if credential.last_used_at else NONE,
        )
        for credential in listed
    ]
    return format_table(headers, rows)
