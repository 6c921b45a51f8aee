"""The flags every command takes: `--json`, `-q/--quiet`, `-v/--verbose`, `--profile`.

They are accepted before the command (`ckrv --json jobs`) and after it
(`ckrv jobs --json`); the root app merges the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from cyclopts import Group, Parameter

from ckrv.cli.output import Output

GLOBAL_GROUP = Group("Global options", sort_key=100)


@Parameter(name="*", group=GLOBAL_GROUP)
@dataclass(frozen=True)
class CommonOptions:
    json: Annotated[bool, Parameter(negative="")] = False
    """Print the result as JSON on stdout (errors as a JSON object on stderr)."""

    quiet: Annotated[bool, Parameter(alias="-q", negative="")] = False
    """Print only the essential result (e.g. just the job id)."""

    verbose: Annotated[bool, Parameter(alias="-v", negative="")] = False
    """Print diagnostics on stderr, such as each HTTP request and its status."""

    profile: str | None = None
    """Which stored login to use, by name (default: CKRV_PROFILE, else "default")."""

    def merged(self, other: CommonOptions | None) -> CommonOptions:
        """A flag given in either place is on; a profile after the command wins."""
        if other is None:
            return self
        return CommonOptions(
            json=self.json or other.json,
            quiet=self.quiet or other.quiet,
            verbose=self.verbose or other.verbose,
            profile=other.profile or self.profile,
        )

    def output(self) -> Output:
        return Output(json=self.json, quiet=self.quiet, verbose=self.verbose)


DEFAULT_OPTIONS = CommonOptions()
