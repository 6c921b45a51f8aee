"""Files in the state folder that hold secrets: written whole, readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path

from ckrv.services.stack.process import RunAs


def write_private_file(path: Path, text: str, owner: RunAs | None = None) -> None:
    """Replace `path` with `text`, mode 0600, owned by `owner` (default: us).

    Readers never see a half-written file: the text goes to a sibling first and is
    renamed over `path`.
    """
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    if owner is not None:
        os.chown(partial, owner.uid, owner.gid)
    partial.replace(path)
