"""The settings tables of deploy/README.md, made from the settings classes so they cannot drift.

    python deploy/settings_reference.py --check   # exit 1 if the README's tables are stale
    python deploy/settings_reference.py --write   # rewrite them

Every `CkrvSettings` subclass in a `settings` module of `ckrv.services` is a group of
`CKRV_*` variables; the fields every service shares (`ServiceSettings`) are listed once.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import ckrv.services
from ckrv.services.common.settings import (
    DEV_DEFAULT_MARK,
    CkrvSettings,
    CommonSettings,
    ServiceSettings,
)

README = Path(__file__).parent / "README.md"
BEGIN = "<!-- settings reference: begin (python deploy/settings_reference.py --write) -->"
END = "<!-- settings reference: end -->"


@dataclass(frozen=True)
class Setting:
    variable: str
    default: str
    description: str
    secret: bool


def settings_classes() -> list[type[CkrvSettings]]:
    """Every settings class of the services, the shared connections first."""
    found: list[type[CkrvSettings]] = []
    for module_info in pkgutil.walk_packages(ckrv.services.__path__, "ckrv.services."):
        if module_info.name.rsplit(".", 1)[-1] != "settings":
            continue
        module = importlib.import_module(module_info.name)
        found.extend(
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, CkrvSettings)
            and value.__module__ == module.__name__
            and value not in (CkrvSettings, ServiceSettings)
        )
    return sorted(found, key=lambda cls: (cls is not CommonSettings, cls.env_var("")))


def settings_of(cls: type[CkrvSettings], *, own_only: bool) -> Iterator[Setting]:
    """`cls`'s settings; with `own_only`, not those it inherits from ServiceSettings as they are."""
    inherited = ServiceSettings.model_fields if issubclass(cls, ServiceSettings) else {}
    declared = vars(cls).get("__annotations__", {})
    for name, info in cls.model_fields.items():
        if name == "env" and cls is not CommonSettings:
            continue  # one variable, CKRV_ENV, for every class
        if own_only and name in inherited and name not in declared:
            continue
        yield _setting(cls, name, info)


def shared_service_settings() -> Iterator[Setting]:
    """The settings every service has under its own prefix, as `CKRV_<SERVICE>_…`."""
    for name, info in ServiceSettings.model_fields.items():
        if name != "env":
            yield _setting(ServiceSettings, name, info, prefix="CKRV_<SERVICE>_")


def setting_variables() -> set[str]:
    """Every `CKRV_*` variable a service reads."""
    return {
        setting.variable
        for cls in settings_classes()
        for setting in settings_of(cls, own_only=False)
    }


def _setting(
    cls: type[CkrvSettings], name: str, info: FieldInfo, prefix: str | None = None
) -> Setting:
    if name == "env":
        variable = "CKRV_ENV"
    elif prefix:
        variable = f"{prefix}{name.upper()}"
    else:
        variable = cls.env_var(name)
    return Setting(
        variable=variable,
        default=_default(info),
        description=(info.description or "").replace("|", "\\|").replace("\n", " "),
        secret=_is_secret(info.annotation),
    )


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and extra.get(DEV_DEFAULT_MARK):
        return "required (a default in dev)"
    if info.default_factory is not None:
        # Computed where the service runs (e.g. a path): only an empty one says anything here.
        return "computed" if info.get_default(call_default_factory=True) else "none"
    value = info.default
    if value is PydanticUndefined or isinstance(value, SecretStr):
        return "required"
    if value is None or value == ():
        return "unset" if value is None else "none"
    if isinstance(value, tuple):
        return f"`{', '.join(_plain(item) for item in value)}`"
    return f"`{_plain(value)}`"


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(getattr(value, "value", value))


def _table(settings: Iterator[Setting]) -> list[str]:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in settings:
        meaning = f"Secret. {setting.description}" if setting.secret else setting.description
        lines.append(f"| `{setting.variable}` | {setting.default} | {meaning} |")
    return lines


def reference() -> str:
    """The Markdown between the README's markers."""
    lines = [
        "Every service's own settings: `CKRV_<SERVICE>_…`, with `<SERVICE>` one of "
        "`GATEWAY`, `DISPATCHER`, `WATCHER`, `LOG_RELAY`, `ARTIFACTS`, `NOTIFIER`.",
        "",
        *_table(shared_service_settings()),
    ]
    for cls in settings_classes():
        lines += ["", f"#### `{cls.env_var('')}*` ({cls.__name__})", ""]
        if summary := vars(cls).get("__doc__"):
            lines += [summary.strip().splitlines()[0], ""]
        lines += _table(settings_of(cls, own_only=True))
    return "\n".join(lines)


def current_reference(readme: str) -> str:
    begin, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[begin:end].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    action.add_argument("--write", action="store_true", help="rewrite the README's tables")
    arguments = parser.parse_args()
    readme = README.read_text()
    wanted = reference()
    if arguments.check:
        if current_reference(readme) != wanted:
            print(
                f"{README}: the settings reference is out of date; "
                "run python deploy/settings_reference.py --write",
                file=sys.stderr,
            )
            sys.exit(1)
        return
    begin, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    README.write_text(f"{readme[:begin]}\n{wanted}\n{readme[end:]}")


if __name__ == "__main__":
    main()
