"""Stored git credentials at rest: key rotation, and ciphertexts that were altered or moved.

Credentials are added through gateway processes; the rows are then changed and
opened directly in PostgreSQL, as the dispatcher opens them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.services.common.credentials import GitCredential, open_credential
from ckrv.services.common.db import session_factory
from ckrv.services.common.sealing import KeyRing, UnsealError, generate_key_entry
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.credentials import new_name, new_token
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

NEXT_KEY = generate_key_entry("next")
# What an operator sets to rotate: the new key first, the one in use so far after it.
ROTATED_KEYS = KeyRing.parse(f"{NEXT_KEY},{DEVELOPMENT_CREDENTIAL_KEYS}")
OLD_KEYS = KeyRing.parse(DEVELOPMENT_CREDENTIAL_KEYS)


@pytest.fixture(scope="module")
async def rotated_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    """A second gateway replica on the same servers, restarted with a new key put first."""
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={"CKRV_CREDENTIAL_KEYS": f"{NEXT_KEY},{DEVELOPMENT_CREDENTIAL_KEYS}"},
    ) as rotated:
        yield rotated


def add(client: httpx.Client, name: str, value: str) -> UUID:
    response = client.post(
        "/credentials", json={"name": name, "provider": "github", "value": value}
    )
    assert response.status_code == 201, response.text
    return UUID(client.get("/users/me").json()["id"])


async def open_value(database: AsyncEngine, keys: KeyRing, owner: UUID, name: str) -> str:
    async with session_factory(database)() as session, session.begin():
        credential = await open_credential(session, keys, owner, name)
    assert credential is not None
    return credential.value.get_secret_value()


async def refused(database: AsyncEngine, owner: UUID, name: str, secret: str) -> str:
    """Opening fails; the error's message, which never holds the value."""
    async with session_factory(database)() as session, session.begin():
        with pytest.raises(UnsealError) as failure:
            await open_credential(session, ROTATED_KEYS, owner, name)
    message = str(failure.value)
    assert secret not in message
    assert secret not in repr(failure.value)
    return message


async def stored_row(database: AsyncEngine, owner: UUID, name: str) -> GitCredential:
    async with session_factory(database)() as session:
        row = await session.scalar(
            select(GitCredential).where(
                col(GitCredential.user_id) == owner, col(GitCredential.name) == name
            )
        )
    assert row is not None
    return row


async def overwrite(database: AsyncEngine, row: GitCredential, key_id: str, sealed: bytes) -> None:
    async with session_factory(database)() as session, session.begin():
        await session.execute(
            update(GitCredential)
            .where(col(GitCredential.id) == row.id)
            .values(key_id=key_id, ciphertext=sealed)
        )


async def test_values_sealed_before_a_rotation_still_open_after_it(
    gateway: RunningGateway, rotated_gateway: RunningGateway, database: AsyncEngine
) -> None:
    email = f"rotation-{new_name()}@example.com"
    before, after = new_token(), new_token()
    before_name, after_name = new_name(), new_name()
    with httpx.Client(
        base_url=gateway.api_url, headers={"Authorization": f"Bearer {gateway.token(email)}"}
    ) as old_gateway:
        owner = add(old_gateway, before_name, before)
    with httpx.Client(
        base_url=rotated_gateway.api_url,
        headers={"Authorization": f"Bearer {rotated_gateway.token(email)}"},
    ) as new_gateway:
        add(new_gateway, after_name, after)

    assert (await stored_row(database, owner, before_name)).key_id == "dev"
    assert (await stored_row(database, owner, after_name)).key_id == "next"
    assert await open_value(database, ROTATED_KEYS, owner, before_name) == before
    assert await open_value(database, ROTATED_KEYS, owner, after_name) == after
    # A service still on the old keys cannot open the new value, and says why.
    async with session_factory(database)() as session, session.begin():
        with pytest.raises(UnsealError, match="key 'next', which is not in the key ring"):
            await open_credential(session, OLD_KEYS, owner, after_name)


async def test_an_altered_ciphertext_does_not_open(
    client_for: ClientFactory, database: AsyncEngine
) -> None:
    name, token = new_name(), new_token()
    owner = add(client_for(), name, token)
    row = await stored_row(database, owner, name)
    assert token.encode() not in row.ciphertext

    altered = row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1])
    await overwrite(database, row, row.key_id, altered)
    assert "authentication failed" in await refused(database, owner, name, token)

    await overwrite(database, row, row.key_id, row.ciphertext[:20])
    assert "truncated" in await refused(database, owner, name, token)


async def test_a_ciphertext_moved_to_another_row_does_not_open(
    client_for: ClientFactory, database: AsyncEngine
) -> None:
    owner_client, other_client = client_for(), client_for()
    name, other_name, token = new_name(), new_name(), new_token()
    owner = add(owner_client, name, token)
    add(owner_client, other_name, new_token())
    # Another user with a credential of the same name.
    other = add(other_client, name, new_token())
    source = await stored_row(database, owner, name)

    for target_owner, target_name in ((owner, other_name), (other, name)):
        target = await stored_row(database, target_owner, target_name)
        await overwrite(database, target, source.key_id, source.ciphertext)
        message = await refused(database, target_owner, target_name, token)
        assert "belongs elsewhere" in message

    assert await open_value(database, ROTATED_KEYS, owner, name) == token
