"""Bad input, field by field: each request gets its 4xx and error code, and leaves no trace.

These run against a gateway in cloud mode (local repositories refused, as in
production); only development sign-in stays on. After every refused request the
user has no job, no outbox row, no quota charge, no idempotency key and no event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.schemas.spec import MAX_SPEC_BYTES
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.jobs import SPEC, job_body
from tests.integration.gateway.lifecycle import (
    StoredRows,
    events_of_user_after,
    last_stream_sequence,
    stored_rows,
)
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

FREE_JOBS = 10
NO_ROWS = StoredRows(jobs=0, outbox=0, quota_charges=0, idempotency_keys=0)


@pytest.fixture(scope="module")
async def cloud_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    """A second gateway replica on the same servers, without the local-repository switch."""
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={"CKRV_GATEWAY_ALLOW_LOCAL_REPOSITORIES": "false"},
    ) as second:
        yield second


@dataclass
class User:
    client: httpx.Client
    id: str


@pytest.fixture
def new_user(cloud_gateway: RunningGateway) -> Iterator[Callable[[], User]]:
    """`new_user()`: a fresh free-tier user of the cloud-mode gateway."""
    clients: list[httpx.Client] = []

    def make() -> User:
        email = f"bad-input-{uuid4().hex[:12]}@example.com"
        client = httpx.Client(
            base_url=cloud_gateway.api_url,
            headers={"Authorization": f"Bearer {cloud_gateway.token(email)}"},
            timeout=30,
        )
        clients.append(client)
        return User(client, client.get("/users/me").json()["id"])

    yield make
    for client in clients:
        client.close()


@dataclass(frozen=True)
class Bad:
    """One bad request and the answer it must get."""

    method: str = "POST"
    path: str = "/jobs"
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 422
    error: str = "validation_error"
    # The field `details` must name; None for errors without field details.
    field: str | None = None


async def refused_without_trace(
    bad: Bad, user: User, nc: Client, database: AsyncEngine
) -> dict[str, Any]:
    """Send `bad`, check the answer, check nothing was written; returns the error body."""
    before = await last_stream_sequence(nc)
    response = user.client.request(
        bad.method,
        bad.path,
        json=bad.json,
        content=bad.content,
        params=bad.params,
        headers=bad.headers,
    )
    assert response.status_code == bad.status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == bad.error, body
    assert body["message"]
    if bad.field is not None:
        assert bad.field in [detail["field"] for detail in body["details"]], body

    listed = user.client.get("/jobs").json()
    assert listed == {"jobs": [], "next_cursor": None}
    assert user.client.get("/users/me").json()["job_quota_remaining"] == FREE_JOBS
    usage = user.client.get("/billing/usage").json()
    assert (usage["jobs_this_cycle"], usage["overage_jobs"]) == (0, 0)
    assert await stored_rows(database, user.id) == NO_ROWS
    assert await events_of_user_after(nc, before, user.id) == []
    return body


def submit(field: str, **overrides: Any) -> Bad:
    return Bad(json=job_body(**overrides), field=field)


def spec(content: str) -> Bad:
    return submit("spec_content", spec_content=content)


def repository(url: str) -> Bad:
    return submit("git_repo_url", git_repo_url=url)


def branch(name: str) -> Bad:
    return submit("git_base_branch", git_base_branch=name)


def json_body(content: bytes) -> Bad:
    return Bad(content=content, headers={"content-type": "application/json"}, field="body")


def cursor_of(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


BAD_SPECS = {
    "oversized": spec(SPEC + "#" * MAX_SPEC_BYTES),
    "not yaml": spec("id: add-login\ngoal: [unclosed\n"),
    "tab-indented yaml": spec("id: add-login\n\tgoal: x\n"),
    "a list": spec("- id: add-login\n- goal: Add a login page.\n"),
    "a scalar": spec("Add a login page with tests."),
    "empty": spec(""),
    "only a comment": spec("# nothing here\n"),
    "without id": spec("goal: Add a login page.\n"),
    "id with a space": spec("id: add login\ngoal: x\n"),
    "id with a slash": spec("id: ../add-login\ngoal: x\n"),
    "id with a dot": spec("id: add.login\ngoal: x\n"),
    "id a mapping": spec("id: {a: b}\ngoal: x\n"),
    "id empty": spec("id: ''\ngoal: x\n"),
    "id too long": spec(f"id: {'a' * 101}\ngoal: x\n"),
    "without overview or goal": spec("id: add-login\n"),
    "blank goal": spec("id: add-login\ngoal: '   '\n"),
    "goal not text": spec("id: add-login\ngoal: [a, b]\n"),
    "not a string": submit("spec_content", spec_content=42),
    "null": submit("spec_content", spec_content=None),
}

BAD_REPOSITORIES = {
    "file url": repository("file:///srv/git/app.git"),
    "absolute path": repository("/srv/git/app.git"),
    "relative path": repository("./app"),
    "home path": repository("~/src/app"),
    "http": repository("http://example.com/acme/app.git"),
    "ftp": repository("ftp://example.com/acme/app.git"),
    "git protocol": repository("git://example.com/acme/app.git"),
    "no scheme": repository("example.com/acme/app.git"),
    "empty": repository(""),
    "blank": repository("   "),
    "https without path": repository("https://example.com"),
    "https with only a slash": repository("https://example.com/"),
    "https without host": repository("https:///acme/app.git"),
    "https with user and password": repository("https://me:hunter2@example.com/acme/app.git"),
    "ssh with user and password": repository("ssh://me:hunter2@example.com/acme/app.git"),
    "ssh without path": repository("ssh://git@example.com"),
    "not a string": submit("git_repo_url", git_repo_url=["https://example.com/acme/app.git"]),
}

BAD_BRANCHES = {
    "with a space": branch("my branch"),
    "with ..": branch("release..next"),
    "ending .lock": branch("topic.lock"),
    "part ending .lock": branch("topic.lock/x"),
    "starting -": branch("-f"),
    "with @{": branch("main@{1}"),
    "ending /": branch("feature/"),
    "starting /": branch("/main"),
    "double slash": branch("feature//x"),
    "part starting .": branch("feature/.x"),
    "ending .": branch("main."),
    "HEAD": branch("HEAD"),
    "empty": branch(""),
    "with ~": branch("main~1"),
    "with ^": branch("main^"),
    "with :": branch("a:b"),
    "with ?": branch("a?"),
    "with *": branch("a*"),
    "with [": branch("a[b"),
    "with a backslash": branch("a\\b"),
    "with a newline": branch("main\n"),
    "with DEL": branch("main\x7f"),
    "too long": branch("a" * 256),
    "not a string": submit("git_base_branch", git_base_branch=7),
}

BAD_CREDENTIALS = {
    "unknown": submit("git_credential_name", git_credential_name="no-such-credential"),
    "blank": submit("git_credential_name", git_credential_name="  "),
    "not a string": submit("git_credential_name", git_credential_name={"name": "x"}),
}

BAD_BODIES = {
    "empty object": Bad(json={}, field="spec_content"),
    "without spec": Bad(
        json={"git_repo_url": "https://example.com/acme/app.git"}, field="spec_content"
    ),
    "without repository": Bad(json={"spec_content": SPEC}, field="git_repo_url"),
    "unknown field": submit("priority", priority="high"),
    "misspelled field": Bad(
        json={"spec_content": SPEC, "git_repo_url": "https://example.com/a/b.git", "branch": "x"},
        field="branch",
    ),
    "not json": json_body(b"spec_content=x"),
    "truncated json": json_body(b'{"spec_content": "id: a'),
    "json list": Bad(json=[job_body()], field="body"),
    "json string": Bad(json="id: add-login", field="body"),
    "json null": json_body(b"null"),
    "no body": Bad(field="body"),
    "json sent as text": Bad(
        content=json.dumps(job_body()).encode(),
        headers={"content-type": "text/plain"},
        field="body",
    ),
}

BAD_LIST_QUERIES = {
    "limit 0": Bad(method="GET", params={"limit": "0"}, field="limit"),
    "limit 101": Bad(method="GET", params={"limit": "101"}, field="limit"),
    "limit -1": Bad(method="GET", params={"limit": "-1"}, field="limit"),
    "limit abc": Bad(method="GET", params={"limit": "abc"}, field="limit"),
    "limit 1.5": Bad(method="GET", params={"limit": "1.5"}, field="limit"),
    "limit huge": Bad(method="GET", params={"limit": "9" * 40}, field="limit"),
    "cursor garbage": Bad(method="GET", params={"cursor": "garbage"}, field="cursor"),
    "cursor punctuation": Bad(method="GET", params={"cursor": "!!!!"}, field="cursor"),
    "cursor empty": Bad(method="GET", params={"cursor": ""}, field="cursor"),
    "cursor not json": Bad(
        method="GET",
        params={"cursor": base64.urlsafe_b64encode(b"\xff\xfe not json").decode()},
        field="cursor",
    ),
    "cursor a list": Bad(method="GET", params={"cursor": cursor_of([1, 2])}, field="cursor"),
    "cursor without id": Bad(
        method="GET",
        params={"cursor": cursor_of({"created_at": "2025-03-14T09:00:00+00:00"})},
        field="cursor",
    ),
    "cursor with a bad date": Bad(
        method="GET",
        params={"cursor": cursor_of({"created_at": "yesterday", "id": str(uuid4())})},
        field="cursor",
    ),
    "cursor with a numeric id": Bad(
        method="GET",
        params={"cursor": cursor_of({"created_at": "2025-03-14T09:00:00+00:00", "id": 5})},
        field="cursor",
    ),
    "cursor with a numeric date": Bad(
        method="GET",
        params={"cursor": cursor_of({"created_at": 1741942800, "id": str(uuid4())})},
        field="cursor",
    ),
    "cursor too long": Bad(method="GET", params={"cursor": "A" * 501}, field="cursor"),
    "unknown status": Bad(method="GET", params={"status": "bogus"}, field="status"),
    "internal status": Bad(method="GET", params={"status": "timed_out"}, field="status"),
    "status in capitals": Bad(method="GET", params={"status": "PENDING"}, field="status"),
}

NOT_UUIDS = ("not-a-uuid", "42", "0192f4a1-7c3e-7b2a-9d41-5e6f7a8b9c0", "x" * 64)
BAD_JOB_IDS = {
    f"{what} {job_id!r}": Bad(method=method, path=path.format(job_id), field="job_id")
    for job_id in NOT_UUIDS
    for what, method, path in (
        ("get", "GET", "/jobs/{}"),
        ("cancel", "POST", "/jobs/{}/cancel"),
        ("events", "GET", "/jobs/{}/events"),
    )
}

BAD_IDEMPOTENCY_KEYS = {
    "too long": Bad(json=job_body(), headers={"Idempotency-Key": "k" * 256}),
    "empty": Bad(json=job_body(), headers={"Idempotency-Key": ""}),
}


def table(cases: dict[str, Bad]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("bad", list(cases.values()), ids=list(cases))


@table(BAD_SPECS)
async def test_bad_spec(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_REPOSITORIES)
async def test_bad_repository_url(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    body = await refused_without_trace(bad, new_user(), nc, database)
    assert "hunter2" not in json.dumps(body), "the refusal echoes the password"


@table(BAD_BRANCHES)
async def test_bad_base_branch(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_CREDENTIALS)
async def test_bad_credential_name(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_BODIES)
async def test_malformed_body(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_LIST_QUERIES)
async def test_bad_list_query(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_JOB_IDS)
async def test_bad_job_id(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    await refused_without_trace(bad, new_user(), nc, database)


@table(BAD_IDEMPOTENCY_KEYS)
async def test_bad_idempotency_key(
    bad: Bad, new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    body = await refused_without_trace(bad, new_user(), nc, database)
    assert body["details"][0]["field"] == "Idempotency-Key"


async def test_an_existing_credential_of_another_user_does_not_count(
    new_user: Callable[[], User], nc: Client, database: AsyncEngine
) -> None:
    # Credentials are per user: the name must exist for the submitting user itself.
    await refused_without_trace(
        submit("git_credential_name", git_credential_name="acme-github-pat"),
        new_user(),
        nc,
        database,
    )


async def test_the_limits_themselves_are_accepted(new_user: Callable[[], User]) -> None:
    """Each rule's edge is inside it: a spec of exactly 256 KiB, 100 a page, a 255-char key."""
    user = new_user()
    padding = MAX_SPEC_BYTES - len(SPEC.encode())
    largest = SPEC + "#" * (padding - 1) + "\n"
    assert len(largest.encode()) == MAX_SPEC_BYTES
    created = user.client.post(
        "/jobs", json=job_body(spec_content=largest), headers={"Idempotency-Key": "k" * 255}
    )
    assert created.status_code == 201, created.text
    assert user.client.get("/jobs", params={"limit": "100"}).status_code == 200
    assert user.client.get("/jobs", params={"limit": "1"}).status_code == 200
