"""HTTP client of the Chakravarti Cloud API: one method per endpoint the commands use.

Every failure leaves here as a `CloudError`: the service's JSON error bodies keep
their code, message and extra fields; a connection that cannot be made, a
timeout, or an answer outside the contract get the client's own codes.

Requests carry the bearer token of the command (see `config`); the sign-in
endpoints under `/auth` carry none. When the service refuses a token that can be
renewed (a stored login's), the request is sent once more with the new one.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, BinaryIO, Self, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import ValidationError

from ckrv.cli.config import (
    API_URL_VARIABLE,
    TIMEOUT_VARIABLE,
    BearerToken,
    LoginToken,
    Settings,
    StaticToken,
    StoredLoginProvider,
    resolve_token,
    token_from_environment,
)
from ckrv.cli.credentials import StoredLogin, open_credential_store
from ckrv.cli.errors import CloudError, SessionEndedError
from ckrv.cli.models import (
    ApiModel,
    ArtifactList,
    DeviceAuthorization,
    GitCredential,
    GitCredentialList,
    Job,
    JobPage,
    LogPage,
    TokenPair,
    User,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookList,
    WebhookSecret,
)
from ckrv.cli.profiles import login_command

ModelT = TypeVar("ModelT", bound=ApiModel)

RETRY_DELAY_SECONDS = 0.5
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# A followed log sends a heartbeat every 15 s: this long without a byte means a dead connection.
STREAM_READ_TIMEOUT_SECONDS = 60.0
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_ERROR_BODY_SNIPPET = 200


@dataclass(frozen=True)
class Download:
    """What a download wrote: how many bytes, and their SHA-256 (hex)."""

    size: int
    sha256: str


def _client_version() -> str:
    try:
        return version("chakravarti-cloud")
    except PackageNotFoundError:
        return "unknown"


def new_idempotency_key() -> str:
    """A fresh key for one submission; its retries reuse it, so the service creates one job."""
    return str(uuid.uuid4())


class CloudClient:
    """A session with the API at `settings.api_url`, authenticated by a bearer token.

    Without a token only the sign-in endpoints (`/auth/...`) can be called.
    """

    def __init__(
        self,
        settings: Settings,
        token: str | BearerToken | None,
        *,
        log: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.token: BearerToken | None = (
            StaticToken(token, "argument") if isinstance(token, str) else token
        )
        self._log = log
        self._http = httpx.Client(
            base_url=settings.api_url + "/",
            timeout=settings.timeout,
            headers={"Accept": "application/json", "User-Agent": f"ckrv/{_client_version()}"},
            transport=transport,
        )

    @classmethod
    def from_environment(
        cls, *, profile: str | None = None, log: Callable[[str], None] | None = None
    ) -> Self:
        """Settings and token from the environment and the profile's stored login.

        `ConfigError` if a setting is malformed or there is no token at all.
        """
        settings = Settings.from_env(profile=profile)
        token = resolve_token(
            [
                token_from_environment,
                StoredLoginProvider(
                    settings, open_credential_store, partial(refresh_login, log=log), log=log
                ),
            ],
            settings.profile,
        )
        if isinstance(token, LoginToken):
            settings = token.settings
        return cls(settings, token, log=log)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Endpoints

    def create_job(
        self,
        *,
        spec_content: str,
        git_repo_url: str,
        git_base_branch: str,
        git_credential_name: str | None,
        idempotency_key: str,
    ) -> Job:
        """`POST /jobs`; 201 for a new job, 200 when the key replays an earlier submission."""
        body = self._request(
            "POST",
            "jobs",
            json={
                "spec_content": spec_content,
                "git_repo_url": git_repo_url,
                "git_base_branch": git_base_branch,
                "git_credential_name": git_credential_name,
            },
            headers={"Idempotency-Key": idempotency_key},
            idempotent=True,
        )
        return self._model(Job, body, "POST", "jobs")

    def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage:
        """`GET /jobs`: one page of the user's jobs, newest first."""
        params = {
            name: value
            for name, value in (("status", status), ("limit", limit), ("cursor", cursor))
            if value is not None
        }
        body = self._request("GET", "jobs", params=params, idempotent=True)
        return self._model(JobPage, body, "GET", "jobs")

    def get_job(self, job_id: str) -> Job:
        path = f"jobs/{quote(job_id, safe='')}"
        return self._model(Job, self._request("GET", path, idempotent=True), "GET", path)

    def cancel_job(self, job_id: str) -> Job:
        """`POST /jobs/{id}/cancel`: 202 with the job, `conflict` (409) once it has ended."""
        path = f"jobs/{quote(job_id, safe='')}/cancel"
        return self._model(Job, self._request("POST", path, idempotent=False), "POST", path)

    def job_logs(
        self, job_id: str, *, tail: int | None = None, after: int | None = None
    ) -> LogPage:
        """`GET /jobs/{id}/logs`: a page of the job's log; `after` is a line's `seq`."""
        path = f"jobs/{quote(job_id, safe='')}/logs"
        params = {
            name: value for name, value in (("tail", tail), ("after", after)) if value is not None
        }
        body = self._request("GET", path, params=params, idempotent=True)
        return self._model(LogPage, body, "GET", path)

    @contextmanager
    def log_events(
        self, job_id: str, *, tail: int | None = None, last_event_id: str | None = None
    ) -> Iterator[Iterator[ServerSentEvent]]:
        """`GET /jobs/{id}/logs` as Server-Sent Events, resumed after `last_event_id`.

        A refusal is a `CloudError`; a connection that fails or drops raises httpx's
        `TransportError` from the events, for the caller to reconnect.
        """
        path = f"jobs/{quote(job_id, safe='')}/logs"
        params = {"follow": "true"} | ({"tail": str(tail)} if tail is not None else {})
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self.settings.timeout, read=STREAM_READ_TIMEOUT_SECONDS)
        if self.token is None:
            raise AssertionError(f"GET {path} needs a bearer token")  # pragma: no cover
        token = self.token.value()
        while True:
            with self._http.stream(
                "GET", path, params=params, headers=_with_bearer(headers, token), timeout=timeout
            ) as response:
                self._debug(f"HTTP GET {response.url} -> {response.status_code} (event stream)")
                if response.status_code == httpx.codes.UNAUTHORIZED:
                    renewed = self.token.renew(token)
                    if renewed is not None and renewed != token:
                        token = renewed
                        continue
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise _bad_response(response, "it is not an event stream")
                yield EventSource(response).iter_sse()
                return

    def list_artifacts(self, job_id: str) -> ArtifactList:
        """`GET /jobs/{id}/artifacts`: the job's stored results; `gone` (410) once expired."""
        path = f"jobs/{quote(job_id, safe='')}/artifacts"
        return self._model(ArtifactList, self._request("GET", path, idempotent=True), "GET", path)

    def job_diff(self, job_id: str) -> bytes:
        """`GET /jobs/{id}/artifacts/diff`: the job's diff, as `git apply` takes it."""
        path = f"jobs/{quote(job_id, safe='')}/artifacts/diff"
        response = self._answer("GET", path, headers={"Accept": "text/plain"}, idempotent=True)
        if not response.is_success:
            raise error_from_response(response)
        return response.content

    def download_artifact(self, job_id: str, name: str, destination: BinaryIO) -> Download:
        """`GET /jobs/{id}/artifacts/{name}`, then the storage URL it redirects to; the
        result's bytes are written to `destination` as they come."""
        path = f"jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='')}"
        response = self._answer("GET", path, idempotent=True)
        if not response.is_redirect:
            if response.is_success:
                raise _bad_response(response, "it is not a redirect to the download")
            raise error_from_response(response)
        url = response.headers["location"]
        digest = hashlib.sha256()
        size = 0
        try:
            # The URL carries its own proof: no bearer token goes to the storage.
            with self._http.stream("GET", url, headers={"Accept": "*/*"}) as download:
                self._debug(
                    f"HTTP GET {download.url.copy_with(query=None)} -> {download.status_code}"
                )
                if not download.is_success:
                    download.read()
                    raise CloudError(
                        "download_failed",
                        f"downloading {name} of job {job_id} failed: the storage answered "
                        f"HTTP {download.status_code} {download.reason_phrase}",
                        hint="Try again; if it keeps failing, the service has a problem.",
                    )
                for chunk in download.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    destination.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except httpx.TransportError as error:
            raise CloudError(
                "unreachable", f"downloading {name} of job {job_id} failed: {_reason(error)}"
            ) from error
        return Download(size=size, sha256=digest.hexdigest())

    def me(self) -> User:
        path = "users/me"
        return self._model(User, self._request("GET", path, idempotent=True), "GET", path)

    def add_credential(
        self, *, name: str, provider: str, credential_type: str, value: str
    ) -> GitCredential:
        """`POST /credentials`: the stored credential; `conflict` (409) when the name is taken."""
        body = self._request(
            "POST",
            "credentials",
            json={
                "name": name,
                "provider": provider,
                "credential_type": credential_type,
                "value": value,
            },
            # Sent again after a lost answer, it would be refused as a taken name.
            idempotent=False,
        )
        return self._model(GitCredential, body, "POST", "credentials")

    def list_credentials(self) -> GitCredentialList:
        body = self._request("GET", "credentials", idempotent=True)
        return self._model(GitCredentialList, body, "GET", "credentials")

    def remove_credential(self, name: str) -> None:
        """`DELETE /credentials/{name}`; `not_found` (404) when there is none of that name."""
        self._request(
            "DELETE", f"credentials/{quote(name, safe='')}", idempotent=False, decode=False
        )

    def add_webhook(self, *, url: str, event_types: list[str] | None, description: str) -> Webhook:
        """`POST /webhooks`: the new webhook, with its signing secret (shown this once)."""
        body = self._request(
            "POST",
            "webhooks",
            json={"url": url, "event_types": event_types, "description": description},
            # Sent again after a lost answer, it would make a second webhook.
            idempotent=False,
        )
        return self._model(Webhook, body, "POST", "webhooks")

    def list_webhooks(self) -> WebhookList:
        body = self._request("GET", "webhooks", idempotent=True)
        return self._model(WebhookList, body, "GET", "webhooks")

    def remove_webhook(self, webhook_id: str) -> None:
        """`DELETE /webhooks/{id}`; `not_found` (404) when the user has no such webhook."""
        path = f"webhooks/{quote(webhook_id, safe='')}"
        self._request("DELETE", path, idempotent=False, decode=False)

    def webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> WebhookDeliveryPage:
        """`GET /webhooks/{id}/deliveries`: a page of its deliveries, newest first."""
        path = f"webhooks/{quote(webhook_id, safe='')}/deliveries"
        params = {
            name: value
            for name, value in (("limit", limit), ("cursor", cursor))
            if value is not None
        }
        body = self._request("GET", path, params=params, idempotent=True)
        return self._model(WebhookDeliveryPage, body, "GET", path)

    def test_webhook(self, webhook_id: str) -> WebhookDelivery:
        """`POST /webhooks/{id}/test`: the ping's delivery, not yet sent."""
        path = f"webhooks/{quote(webhook_id, safe='')}/test"
        body = self._request("POST", path, idempotent=False)
        return self._model(WebhookDelivery, body, "POST", path)

    def rotate_webhook_secret(self, webhook_id: str) -> WebhookSecret:
        """`POST /webhooks/{id}/rotate-secret`: the new secret (the old one signs for 24 h)."""
        path = f"webhooks/{quote(webhook_id, safe='')}/rotate-secret"
        # Not resent: a second rotation would drop the secret the first one kept valid.
        body = self._request("POST", path, idempotent=False)
        return self._model(WebhookSecret, body, "POST", path)

    # Sign-in endpoints: no bearer token; the client id says which client asks.

    def start_device_authorization(self) -> DeviceAuthorization:
        """`POST /auth/device`: a device code to poll with and a user code to approve."""
        path = "auth/device"
        body = self._request(
            "POST", path, json={"client_id": self.settings.client_id}, idempotent=True, auth=False
        )
        return self._model(DeviceAuthorization, body, "POST", path)

    def exchange_device_code(self, device_code: str) -> TokenPair:
        """`POST /auth/token` with the device code grant: tokens once the user approved.

        Until then a `CloudError` with the RFC 8628 code: `authorization_pending`,
        `slow_down`, `access_denied` or `expired_token`.
        """
        path = "auth/token"
        body = self._request(
            "POST",
            path,
            json={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device_code,
                "client_id": self.settings.client_id,
            },
            # Tokens are issued once per device code: a lost answer would be lost tokens
            # either way, and asking again only costs a pending or expired answer.
            idempotent=True,
            auth=False,
        )
        return self._model(TokenPair, body, "POST", path)

    def refresh_tokens(self, refresh_token: str) -> TokenPair:
        """`POST /auth/refresh`: new tokens; the refresh token rotates, so keep the new one.

        `invalid_grant` (400) when the refresh token is revoked, used already or expired.
        """
        path = "auth/refresh"
        body = self._request(
            "POST",
            path,
            json={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.settings.client_id,
            },
            # Never resent once it may have arrived: the service would see the old refresh
            # token used twice and end the session.
            idempotent=False,
            auth=False,
        )
        return self._model(TokenPair, body, "POST", path)

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """`POST /auth/revoke` (RFC 7009): the session of `refresh_token` ends."""
        self._request(
            "POST",
            "auth/revoke",
            json={
                "token": refresh_token,
                "token_type_hint": "refresh_token",
                "client_id": self.settings.client_id,
            },
            idempotent=True,
            auth=False,
            decode=False,
        )

    # Transport

    @property
    def _api_url_variable(self) -> str:
        return self.settings.api_url_variable or API_URL_VARIABLE

    def _url(self, path: str) -> str:
        return f"{self.settings.api_url}/{path}"

    def _debug(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        auth: bool = True,
        decode: bool = True,
    ) -> Any:
        """The decoded answer to a request; `CloudError` for anything but success."""
        response = self._answer(
            method,
            path,
            json=json,
            params=params,
            headers=headers,
            idempotent=idempotent,
            auth=auth,
        )
        if not response.is_success:
            raise error_from_response(response)
        return self._decode(response) if decode else None

    def _answer(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        auth: bool = True,
    ) -> httpx.Response:
        """The answer to a request, whatever its status.

        A request the service refused with 401 is sent once more if the token renews.
        """
        if not auth:
            response = self._send(method, path, json, params, headers, idempotent=idempotent)
        else:
            if self.token is None:
                raise AssertionError(f"{method} {path} needs a bearer token")  # pragma: no cover
            token = self.token.value()
            response = self._send(
                method, path, json, params, _with_bearer(headers, token), idempotent=idempotent
            )
            if response.status_code == httpx.codes.UNAUTHORIZED:
                renewed = self.token.renew(token)
                if renewed is not None:
                    self._debug("the access token was refused; sending again with a renewed one")
                    response = self._send(
                        method,
                        path,
                        json,
                        params,
                        _with_bearer(headers, renewed),
                        idempotent=idempotent,
                    )
        return response

    def _send(
        self,
        method: str,
        path: str,
        json: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
        *,
        idempotent: bool,
    ) -> httpx.Response:
        """Send once, and a second time after a connection failure when that cannot duplicate.

        A refused or timed-out connect never reached the service, so it is always retried;
        a connection dropped after sending only for idempotent requests (reads, and
        submissions carrying an Idempotency-Key).
        """
        url = self._url(path)
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                response = self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                self._debug(f"HTTP {method} {url} -> no connection: {_reason(error)}")
                if attempt == 1:
                    time.sleep(RETRY_DELAY_SECONDS)
                    continue
                raise self._unreachable(url, error) from error
            except httpx.TimeoutException as error:
                self._debug(f"HTTP {method} {url} -> timed out after {self.settings.timeout:g}s")
                raise CloudError(
                    "timeout",
                    f"no answer from {url} within {self.settings.timeout:g} seconds",
                    hint=f"The service may be overloaded; try again, or raise "
                    f"{TIMEOUT_VARIABLE} (seconds, now {self.settings.timeout:g}).",
                ) from error
            except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
                self._debug(f"HTTP {method} {url} -> connection lost: {_reason(error)}")
                if attempt == 1 and idempotent:
                    time.sleep(RETRY_DELAY_SECONDS)
                    continue
                raise self._unreachable(url, error) from error
            except httpx.HTTPError as error:
                raise self._unreachable(url, error) from error
            elapsed_ms = (time.monotonic() - started) * 1000
            self._debug(
                f"HTTP {method} {response.url} -> {response.status_code} ({elapsed_ms:.0f} ms)"
            )
            return response
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _unreachable(self, url: str, error: Exception) -> CloudError:
        return CloudError(
            "unreachable",
            f"could not reach Chakravarti Cloud at {url}: {_reason(error)}",
            hint=(
                f"Check {self._api_url_variable} (now {self.settings.api_url}) and your network. "
                "To run the service locally, start the local stack with `ckrv-cloud up`."
            ),
        )

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as error:
            raise _bad_response(response, "its body is not JSON") from error

    def _model(self, model: type[ModelT], body: Any, method: str, path: str) -> ModelT:
        try:
            return model.from_body(body)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}"
                for issue in error.errors()[:3]
            )
            raise CloudError(
                "bad_response",
                f"unexpected answer to {method} {self._url(path)}: {problems}",
                hint=f"Is {self._api_url_variable} ({self.settings.api_url}) a Chakravarti Cloud "
                "API?",
            ) from error


def _with_bearer(headers: Mapping[str, str] | None, token: str) -> dict[str, str]:
    return {**(headers or {}), "Authorization": f"Bearer {token}"}


def refresh_login(
    settings: Settings, login: StoredLogin, *, log: Callable[[str], None] | None = None
) -> StoredLogin:
    """`login` with new tokens from `POST /auth/refresh` (the `config.Refresh` of the CLI)."""
    with CloudClient(settings, None, log=log) as client:
        try:
            tokens = client.refresh_tokens(login.refresh_token)
        except CloudError as error:
            if error.code == "invalid_grant":
                raise SessionEndedError(login_command(settings.profile)) from None
            raise
    return login_from_tokens(login.api_url, tokens, email=login.email, previous=login)


def login_from_tokens(
    api_url: str,
    tokens: TokenPair,
    *,
    email: str | None = None,
    previous: StoredLogin | None = None,
) -> StoredLogin:
    """What to store after the service issued `tokens`."""
    refresh_token = tokens.refresh_token or (previous.refresh_token if previous else None)
    if not refresh_token:
        raise CloudError(
            "bad_response",
            f"the tokens from {api_url} have no refresh token, so this login could not last",
        )
    return StoredLogin(
        api_url=api_url,
        access_token=tokens.access_token,
        access_token_expires_at=tokens.expires_at(),
        refresh_token=refresh_token,
        email=email,
    )


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def _bad_response(response: httpx.Response, problem: str) -> CloudError:
    request = response.request
    return CloudError(
        "bad_response",
        f"unexpected answer to {request.method} {request.url} (HTTP {response.status_code}): "
        f"{problem}",
    )


def error_from_response(response: httpx.Response) -> CloudError:
    """The `CloudError` an unsuccessful answer stands for."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code: str = body["error"]
        message = body.get("message") or body.get("error_description") or code.replace("_", " ")
        extra = {key: value for key, value in body.items() if key not in ("error", "message")}
        return CloudError(code, str(message), extra, status)
    request = response.request
    if isinstance(body, dict) and "detail" in body:
        text = str(body["detail"])
    else:
        text = response.text.strip()[:_ERROR_BODY_SNIPPET]
    message = f"{request.method} {request.url} answered HTTP {status} {response.reason_phrase}"
    if text:
        message += f": {text}"
    code = {401: "unauthorized", 404: "not_found"}.get(status, f"http_{status}")
    hint = None
    if status == 404:
        hint = f"{API_URL_VARIABLE} should end in /v1, like http://127.0.0.1:8080/v1."
    return CloudError(code, message, None, status, hint=hint)
