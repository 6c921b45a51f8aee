"""`/v1/credentials` on the session's gateway: write-only values, owner only, bad input refused.

Values are opened the way the dispatcher opens them (`open_credential` on the
gateway's database, with the development key ring the gateway runs with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.schemas.api import MAX_CREDENTIAL_BYTES, GitCredentialType, GitProvider
from ckrv.services.common.credentials import GitCredential
from ckrv.services.common.db import session_factory
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.credentials import new_deploy_key, new_name, new_token, opened
from tests.integration.gateway.jobs import job_body
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration

PUBLIC_FIELDS = {"id", "name", "provider", "credential_type", "created_at", "last_used_at"}


def user_id(client: httpx.Client) -> UUID:
    return UUID(client.get("/users/me").json()["id"])


def add(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"name": new_name(), "provider": "github", "value": new_token()} | fields
    return client.post("/credentials", json=body)


def listed(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/credentials")
    assert response.status_code == 200, response.text
    credentials: list[dict[str, Any]] = response.json()["credentials"]
    return credentials


async def rows_of(database: AsyncEngine, owner: UUID) -> int:
    async with session_factory(database)() as session:
        count = await session.scalar(
            select(func.count()).where(col(GitCredential.user_id) == owner)
        )
    return count or 0


async def test_add_list_and_remove(client: httpx.Client, database: AsyncEngine) -> None:
    name, token = new_name(), new_token()

    created = add(client, name=name, provider="gitlab", value=token)

    assert created.status_code == 201, created.text
    credential = created.json()
    assert set(credential) == PUBLIC_FIELDS
    assert (credential["name"], credential["provider"], credential["credential_type"]) == (
        name,
        "gitlab",
        "pat",
    )
    assert credential["last_used_at"] is None
    assert created.headers["location"] == f"/v1/credentials/{name}"
    assert listed(client) == [credential]

    removed = client.delete(f"/credentials/{name}")
    assert (removed.status_code, removed.content) == (204, b"")
    assert listed(client) == []
    assert await rows_of(database, user_id(client)) == 0
    again = client.delete(f"/credentials/{name}")
    assert (again.status_code, again.json()["error"]) == (404, "not_found")


async def test_a_stored_value_opens_for_its_owner_and_is_marked_used(
    client: httpx.Client, database: AsyncEngine
) -> None:
    name, key = new_name(), new_deploy_key()
    created = add(client, name=name, provider="generic", credential_type="deploy_key", value=key)
    assert created.status_code == 201, created.text
    owner = user_id(client)

    credential = await opened(database, owner, name)

    assert credential is not None
    assert credential.value.get_secret_value() == key
    assert (credential.provider, credential.credential_type) == (
        GitProvider.GENERIC,
        GitCredentialType.DEPLOY_KEY,
    )
    assert key not in repr(credential)
    (shown,) = listed(client)
    assert shown["last_used_at"] is not None
    assert await opened(database, owner, new_name()) is None


async def test_a_deploy_key_is_stored_with_one_final_newline(
    client: httpx.Client, database: AsyncEngine
) -> None:
    name, key = new_name(), new_deploy_key()
    created = add(client, name=name, credential_type="deploy_key", value=f"\n{key.strip()}  ")
    assert created.status_code == 201, created.text

    credential = await opened(database, user_id(client), name)

    assert credential is not None
    assert credential.value.get_secret_value() == key


async def test_a_taken_name_is_a_conflict_and_keeps_the_first_value(
    client: httpx.Client, database: AsyncEngine
) -> None:
    name, first = new_name(), new_token()
    assert add(client, name=name, value=first).status_code == 201

    second = add(client, name=name, value=new_token())

    assert second.status_code == 409, second.text
    assert second.json()["error"] == "conflict"
    assert len(listed(client)) == 1
    credential = await opened(database, user_id(client), name)
    assert credential is not None
    assert credential.value.get_secret_value() == first


async def test_credentials_are_their_owners_alone(
    client_for: ClientFactory, database: AsyncEngine
) -> None:
    owner, other = client_for(), client_for()
    name, token = new_name(), new_token()
    assert add(owner, name=name, value=token).status_code == 201

    assert listed(other) == []
    refused = other.delete(f"/credentials/{name}")
    assert (refused.status_code, refused.json()["error"]) == (404, "not_found")
    assert [credential["name"] for credential in listed(owner)] == [name]
    # Names are per user: the other user may use the same one for a credential of their own.
    other_token = new_token()
    assert add(other, name=name, value=other_token).status_code == 201
    theirs = await opened(database, user_id(other), name)
    assert theirs is not None
    assert theirs.value.get_secret_value() == other_token
    mine = await opened(database, user_id(owner), name)
    assert mine is not None
    assert mine.value.get_secret_value() == token


def test_jobs_may_name_a_stored_credential_only(client: httpx.Client) -> None:
    name = new_name()
    assert add(client, name=name).status_code == 201

    accepted = client.post("/jobs", json=job_body(git_credential_name=name))
    assert accepted.status_code == 201, accepted.text

    assert client.delete(f"/credentials/{name}").status_code == 204
    refused = client.post("/jobs", json=job_body(git_credential_name=name))
    assert refused.status_code == 422, refused.text
    assert refused.json()["details"][0]["field"] == "git_credential_name"


@dataclass(frozen=True)
class Bad:
    """A bad request to `POST /credentials`: its body (or raw content) and the field it names."""

    field: str
    body: dict[str, Any] | None = None
    content: bytes | None = None


def bad(field: str, **fields: Any) -> Bad:
    return Bad(field, {"name": "fine-name", "provider": "github", "value": "ghp_fine"} | fields)


KEY_ARMOUR = "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n"

BAD_REQUESTS: dict[str, Bad] = {
    "name with capitals": bad("name", name="Deploy"),
    "name with underscore": bad("name", name="my_token"),
    "name with a space": bad("name", name="my token"),
    "name with a slash": bad("name", name="../token"),
    "name empty": bad("name", name=""),
    "name too long": bad("name", name="a" * 51),
    "name not a string": bad("name", name=7),
    "name missing": Bad("name", {"provider": "github", "value": "ghp_fine"}),
    "provider unknown": bad("provider", provider="sourcehut"),
    "provider missing": Bad("provider", {"name": "fine-name", "value": "ghp_fine"}),
    "type unknown": bad("credential_type", credential_type="password"),
    "value missing": Bad("value", {"name": "fine-name", "provider": "github"}),
    "value empty": bad("value", value=""),
    "value blank": bad("value", value="   \n"),
    "value null": bad("value", value=None),
    "value not a string": bad("value", value=["ghp_fine"]),
    "value over the size limit": bad("value", value="g" * (MAX_CREDENTIAL_BYTES + 1)),
    "token with a space": bad("value", value="ghp_ab cd"),
    "token on two lines": bad("value", value="ghp_abcd\nghp_efgh"),
    "token with a newline": bad("value", value="ghp_abcd\n"),
    "token not ascii": bad("value", value="ghp_äbcd"),
    "deploy key not armoured": bad("value", credential_type="deploy_key", value="b3BlbnNzaC1rZX"),
    "deploy key a token": bad("value", credential_type="deploy_key", value="ghp_abcd"),
    "deploy key a public key": bad(
        "value", credential_type="deploy_key", value="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me@box"
    ),
    "deploy key armour mismatched": bad(
        "value",
        credential_type="deploy_key",
        value=KEY_ARMOUR.format("AAAA").replace("END OPENSSH", "END RSA"),
    ),
    "deploy key armour without body": bad(
        "value", credential_type="deploy_key", value=KEY_ARMOUR.format("").replace("\n\n", "\n")
    ),
    "unknown field": bad("secret", secret="ghp_elsewhere"),
    "body not json": Bad("body", content=b'{"name": "fine-name",'),
    "body a list": Bad("body", content=b"[]"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_input_is_refused_and_stores_nothing(
    case: Bad, client: httpx.Client, database: AsyncEngine
) -> None:
    if case.content is not None:
        response = client.post(
            "/credentials", content=case.content, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/credentials", json=case.body)

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "validation_error"
    assert case.field in [detail["field"] for detail in answer["details"]], answer
    value = (case.body or {}).get("value")
    if isinstance(value, str) and value.strip():
        assert value.strip() not in response.text
    assert await rows_of(database, user_id(client)) == 0


def test_a_bad_name_to_remove_is_a_validation_error(client: httpx.Client) -> None:
    response = client.delete("/credentials/Not_A_Name")
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/credentials"), ("GET", "/credentials"), ("DELETE", "/credentials/some-name")],
)
def test_every_endpoint_needs_a_token(gateway: RunningGateway, method: str, path: str) -> None:
    response = httpx.request(
        method,
        gateway.api_url + path,
        json={"name": "some-name", "provider": "github", "value": new_token()},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_values_are_never_in_answers_or_logs(
    client: httpx.Client, gateway: RunningGateway, database: AsyncEngine
) -> None:
    token, key = new_token(), new_deploy_key()
    token_name, key_name = new_name(), new_name()
    answers: list[httpx.Response] = [
        add(client, name=token_name, value=token),
        add(client, name=key_name, credential_type="deploy_key", value=key),
        add(client, name=token_name, value=token),
        add(client, name=new_name(), credential_type="deploy_key", value=token),
        add(client, name="Bad Name", value=token),
        add(client, name=new_name(), value=token + " trailing words"),
        client.get("/credentials"),
    ]
    job = client.post("/jobs", json=job_body(git_credential_name=token_name))
    answers += [job, client.get(f"/jobs/{job.json()['id']}/events")]
    await opened(database, user_id(client), token_name)
    answers += [client.delete(f"/credentials/{token_name}")]

    assert [answer.status_code for answer in answers] == [
        *(201, 201, 409, 422, 422, 422, 200),
        *(201, 200, 204),
    ]
    secrets = [token, key.strip(), *key.strip().splitlines()[1:-1]]
    for answer in answers:
        for secret in secrets:
            assert secret not in answer.text
            assert secret not in str(answer.headers)
    log = gateway.log_path.read_text()
    # The audit lines of this test's credentials are there; their values are not.
    assert f'"credential": "{key_name}"' in log
    assert f'"credential": "{token_name}"' in log
    for secret in secrets:
        assert secret not in log
