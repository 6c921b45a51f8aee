"""Git credential values for the tests: fresh each time, so a leak is traced to one test."""

from __future__ import annotations

from uuid import uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat


def new_token() -> str:
    return f"ghp_{uuid4().hex}{uuid4().hex[:4]}"


def new_deploy_key() -> str:
    """A real OpenSSH private key, as `ssh-keygen -t ed25519` writes it (ending in a newline)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def new_name() -> str:
    return f"cred-{uuid4().hex[:12]}"
