"""Files in the state folder that hold secrets: written whole, readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path

from ckrv.services.common.sealing import generate_key_entry
from ckrv.services.stack.process import RunAs

CREDENTIAL_KEYS_FILE = "credential-keys"


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


def development_credential_keys(state_dir: Path) -> str:
    """The key ring sealing the stack's git credentials (`CKRV_CREDENTIAL_KEYS`).

    Generated on first use and kept in the state folder, so stored credentials still
    open after a restart; to rotate, put a new `kid:base64key` entry first in the file.
    """
    path = state_dir / CREDENTIAL_KEYS_FILE
    if not path.exists():
        write_private_file(path, generate_key_entry("local") + "\n")
    return path.read_text().strip()
