"""The activation page's parts that need no server: password hashes, the session cookie,
the checks on an upstream ID token's claims, and escaping in the HTML."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from fastapi import Request, Response
from pydantic import ValidationError

from ckrv.services.gateway.identity import activation_pages as pages
from ckrv.services.gateway.identity.accounts import AccountError, normalise_email, upstream_claims
from ckrv.services.gateway.identity.browser_session import (
    COOKIE_NAME,
    BrowserSession,
    SessionCookies,
)
from ckrv.services.gateway.identity.passwords import (
    hash_password,
    password_problem,
    verify_password,
)
from ckrv.services.gateway.settings import GatewaySettings

ISSUER = "https://login.example.com"


def test_password_hashes_are_salted_scrypt_and_verify_only_the_password() -> None:
    first, second = hash_password("a long passphrase"), hash_password("a long passphrase")

    assert first.startswith("scrypt$15$8$3$")
    assert first != second  # a salt of its own each
    assert verify_password("a long passphrase", first)
    assert verify_password("a long passphrase", second)
    assert not verify_password("a long passphrasE", first)
    assert not verify_password("a long passphrase", "scrypt$broken")
    assert not verify_password("a long passphrase", "md5$15$8$3$c2FsdA$aGFzaA")


def test_new_passwords_must_be_long_enough_but_not_endless() -> None:
    assert password_problem("short") is not None
    assert password_problem("x" * 10) is None
    assert password_problem("x" * 5000) is not None


def _request(cookie: str | None) -> Request:
    headers = [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())] if cookie else []
    return Request({"type": "http", "method": "GET", "path": "/activate", "headers": headers})


def _cookie_value(cookies: SessionCookies, session: BrowserSession) -> tuple[str, str]:
    response = Response()
    cookies.write(response, session)
    header = response.headers["set-cookie"]
    value = header.split(";", 1)[0].split("=", 1)[1]
    return value, header


def test_the_session_cookie_round_trips_and_is_locked_down() -> None:
    cookies = SessionCookies(secret="s" * 32, max_age_seconds=600, secure=True)
    session = BrowserSession.signed_in(uuid4())

    value, header = _cookie_value(cookies, session)

    assert cookies.read(_request(value)) == session
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/activate", "Max-Age=600"):
        assert attribute in header
    assert cookies.read(_request(None)) is None


def test_a_forged_tampered_or_old_session_cookie_is_no_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cookies = SessionCookies(secret="s" * 32, max_age_seconds=600, secure=False)
    value, _ = _cookie_value(cookies, BrowserSession.signed_in(uuid4()))
    other_key = SessionCookies(secret="t" * 32, max_age_seconds=600, secure=False)

    assert other_key.read(_request(value)) is None
    assert cookies.read(_request(value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))) is None
    assert cookies.read(_request("not-a-cookie")) is None
    later = time.time() + 601
    monkeypatch.setattr(time, "time", lambda: later)
    assert cookies.read(_request(value)) is None


def test_csrf_tokens_must_match_exactly() -> None:
    session = BrowserSession.anonymous()
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(None)
    assert not session.csrf_matches("")
    assert not session.csrf_matches(session.csrf_token + "x")
    assert BrowserSession.anonymous().csrf_token != session.csrf_token


def _claims(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER,
        "sub": "248289761001",
        "email": "Jane@Example.com",
        "email_verified": True,
        "name": "Jane Doe",
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def test_upstream_claims_give_issuer_subject_and_the_verified_email() -> None:
    claims = upstream_claims(_claims(), ISSUER)

    assert (claims.issuer, claims.subject, claims.email, claims.name) == (
        ISSUER,
        "248289761001",
        "jane@example.com",
        "Jane Doe",
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "https://evil.example.com"}, "another issuer"),
        ({"sub": None}, "did not say who you are"),
        ({"email": None}, "did not share an email"),
        ({"email": "not-an-address"}, "did not share an email"),
        ({"email_verified": None}, "Verify your email"),
        ({"email_verified": False}, "Verify your email"),
        ({"email_verified": "true"}, "Verify your email"),
    ],
)
def test_upstream_claims_without_what_sign_in_needs_are_refused(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(AccountError, match=reason):
        upstream_claims(_claims(**changes), ISSUER)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (" Jane@Example.COM ", "jane@example.com"),
        ("jane@localhost", None),
        ("jane", None),
        ("@example.com", None),
        ("ja ne@example.com", None),
        ("a@b@example.com", None),
    ],
)
def test_emails_are_lower_cased_and_checked(typed: str, expected: str | None) -> None:
    assert normalise_email(typed) == expected


def test_every_value_in_the_html_is_escaped() -> None:
    hostile = '"><script>alert(1)</script>'

    page = pages.sign_in_page(
        csrf_token=hostile,
        user_code=hostile,
        email=hostile,
        error=hostile,
        allow_signup=True,
        upstream_name=hostile,
    )

    assert "<script>" not in page
    assert page.count("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    confirm = pages.confirm_page(
        account=pages.account_bar(hostile, hostile),
        csrf_token=hostile,
        user_code=hostile,
        client_id=hostile,
        requested_at=datetime.now(UTC),
        expires_at=datetime.now(UTC),
        now=datetime.now(UTC),
    )
    assert "<script>" not in confirm


def test_an_upstream_provider_needs_its_client_id_and_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CKRV_ENV", "dev")
    monkeypatch.setenv("CKRV_GATEWAY_OIDC_ISSUER", ISSUER)
    with pytest.raises(ValidationError, match="CKRV_GATEWAY_OIDC_CLIENT_SECRET"):
        GatewaySettings()
    monkeypatch.setenv("CKRV_GATEWAY_OIDC_CLIENT_ID", "ckrv-gateway")
    monkeypatch.setenv("CKRV_GATEWAY_OIDC_CLIENT_SECRET", "s3cret")
    assert GatewaySettings().oidc_enabled


def test_production_must_set_its_own_session_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_ENV", "production")
    with pytest.raises(ValidationError, match="CKRV_GATEWAY_SESSION_SECRET"):
        GatewaySettings()
