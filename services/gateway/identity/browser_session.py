"""The activation page's session: a signed cookie holding who is signed in and the CSRF token.

The cookie is signed (HMAC-SHA256, itsdangerous) with the gateway's session secret
and carries its own timestamp, so it cannot be forged or kept beyond its maximum
age; it is HttpOnly and SameSite=Lax. Every form carries the session's CSRF token,
compared in constant time with the one in the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE_NAME = "ckrv_activation"
COOKIE_PATH = "/activate"
SIGNING_SALT = "ckrv-activation-session"


@dataclass(frozen=True)
class BrowserSession:
    csrf_token: str
    user_id: UUID | None = None

    @classmethod
    def anonymous(cls) -> BrowserSession:
        return cls(csrf_token=secrets.token_urlsafe(32))

    @classmethod
    def signed_in(cls, user_id: UUID) -> BrowserSession:
        # A fresh CSRF token at sign-in: nothing learnt before it is worth anything after.
        return cls(csrf_token=secrets.token_urlsafe(32), user_id=user_id)

    def csrf_matches(self, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(
            submitted.encode(), self.csrf_token.encode()
        )


@dataclass(frozen=True)
class SessionCookies:
    secret: str
    max_age_seconds: int
    secure: bool

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt=SIGNING_SALT)

    def read(self, request: Request) -> BrowserSession | None:
        """The request's valid, unexpired session; None if it has none."""
        raw = request.cookies.get(COOKIE_NAME)
        if not raw:
            return None
        try:
            data: Any = self._serializer().loads(raw, max_age=self.max_age_seconds)
            csrf_token = data["csrf"]
            user_id = UUID(data["uid"]) if data.get("uid") else None
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if not isinstance(csrf_token, str) or not csrf_token:
            return None
        return BrowserSession(csrf_token=csrf_token, user_id=user_id)

    def write(self, response: Response, session: BrowserSession) -> None:
        value = self._serializer().dumps(
            {"csrf": session.csrf_token, "uid": str(session.user_id) if session.user_id else None}
        )
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=self.max_age_seconds,
            path=COOKIE_PATH,
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE_NAME, path=COOKIE_PATH, secure=self.secure, httponly=True, samesite="lax"
        )
