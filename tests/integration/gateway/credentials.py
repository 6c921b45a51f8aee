"""Git credentials for the tests: fresh values (so a leak is traced to one test), and opening
stored ones as the dispatcher does, with the key ring of the session's gateway."""

from __future__ import annotations

from uuid import UUID, uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.services.common.credentials import OpenedCredential, open_credential
from ckrv.services.common.db import session_factory
from ckrv.services.common.sealing import KeyRing
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS

# The session's gateway runs in development without CKRV_CREDENTIAL_KEYS.
GATEWAY_KEYS = KeyRing.parse(DEVELOPMENT_CREDENTIAL_KEYS)


def new_token() -> str:
    return f"ghp_{uuid4().hex}{uuid4().hex[:4]}"


def new_deploy_key() -> str:
    """A real OpenSSH private key, as `ssh-keygen -t ed25519` writes it (ending in a newline)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def new_name() -> str:
    return f"cred-{uuid4().hex[:12]}"


async def opened(database: AsyncEngine, owner: UUID, name: str) -> OpenedCredential | None:
    """The stored credential, decrypted with the gateway's keys (and marked used)."""
    async with session_factory(database)() as session, session.begin():
        return await open_credential(session, GATEWAY_KEYS, owner, name)
