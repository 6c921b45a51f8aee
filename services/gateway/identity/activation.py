"""The activation page, `/activate`: sign in, confirm a device's user code, approve or deny.

Server-rendered HTML (activation_pages). Every POST carries the session's CSRF
token; wrong user codes and failed sign-ins are throttled per client address and
per code or email. Passwords, codes and tokens are never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from authlib.integrations.starlette_client import OAuthError
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from joserfc.errors import JoseError
from sqlalchemy.ext.asyncio import AsyncSession

from ckrv.services.gateway.context import ContextDep, GatewayContext
from ckrv.services.gateway.identity import activation_pages as pages
from ckrv.services.gateway.identity.accounts import (
    AccountError,
    authenticate_local,
    create_local_account,
    normalise_email,
    upstream_claims,
    user_for_upstream_identity,
)
from ckrv.services.gateway.identity.browser_session import BrowserSession, SessionCookies
from ckrv.services.gateway.identity.flows import (
    decide_device_authorization,
    display_user_code,
    normalise_user_code,
    pending_authorization,
)
from ckrv.services.gateway.identity.passwords import password_problem
from ckrv.services.gateway.identity.tables import DeviceAuthorization
from ckrv.services.gateway.identity.throttle import SIGN_INS, USER_CODES
from ckrv.services.gateway.identity.upstream import (
    CALLBACK_PATH,
    PENDING_CODE_KEY,
    upstream_client,
)
from ckrv.services.gateway.tables import User

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

USER_CODE_LENGTH = 8
# The page holds Approve buttons: it must never be framed (clickjacking), and it runs no script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The address holds the user code.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NEW_CODE_HINT = "Run `ckrv cloud login` again for a new code."


def _cookies(context: GatewayContext) -> SessionCookies:
    settings = context.settings
    return SessionCookies(
        secret=settings.session_secret.get_secret_value(),
        max_age_seconds=settings.session_max_age_seconds,
        secure=settings.base_url.startswith("https://"),
    )


def _client_address(request: Request) -> str:
    # Behind a proxy this is the proxy unless uvicorn is told to trust its forwarded headers.
    return request.client.host if request.client else "unknown"


def _html(
    content: pages.Html,
    status_code: int = 200,
    *,
    context: GatewayContext,
    session: BrowserSession | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    response = HTMLResponse(content, status_code=status_code, headers=SECURITY_HEADERS)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if session is not None:
        _cookies(context).write(response, session)
    return response


def _redirect(
    url: str, *, context: GatewayContext, session: BrowserSession | None = None
) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    if session is not None:
        _cookies(context).write(response, session)
    return response


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _forbidden(context: GatewayContext) -> HTMLResponse:
    # A fresh session comes with the page, so reloading the form works again.
    return _html(
        pages.message_page(
            "Request refused",
            "This form has expired or did not come from this page.",
            hint="Go back, reload the page and try again.",
            link=("/activate", "Start again"),
        ),
        403,
        context=context,
        session=BrowserSession.anonymous(),
    )


def _too_many(context: GatewayContext, message: str, retry_after: int) -> HTMLResponse:
    minutes = max(1, round(retry_after / 60))
    return _html(
        pages.message_page(
            "Too many attempts",
            message,
            hint=f"Wait {minutes} minute{'s' if minutes != 1 else ''}, then try again.",
        ),
        429,
        context=context,
        headers={"Retry-After": str(retry_after)},
    )


@dataclass(frozen=True)
class Visitor:
    """The browser session of a request, and its user if signed in."""

    session: BrowserSession
    user: User | None
    # Whether the cookie must be (re)written on the response.
    new: bool

    def account(self) -> pages.Html:
        if self.user is None:
            return pages.Html("")
        return pages.account_bar(self.user.email, self.session.csrf_token)


async def _visitor(request: Request, context: GatewayContext) -> Visitor:
    session = _cookies(context).read(request)
    if session is None:
        return Visitor(BrowserSession.anonymous(), None, new=True)
    user = None
    if session.user_id is not None:
        async with context.sessions() as db:
            user = await db.get(User, session.user_id)
    return Visitor(session, user, new=False)


def _posted_by_page(visitor: Visitor, form: dict[str, str]) -> bool:
    return not visitor.new and visitor.session.csrf_matches(form.get("csrf_token"))


def _sign_in(
    context: GatewayContext,
    visitor: Visitor,
    user_code: str | None,
    *,
    error: str | None = None,
    email: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    settings = context.settings
    # Named by its host: "Sign in with login.example.com".
    upstream = urlsplit(settings.oidc_issuer).netloc if settings.oidc_issuer else None
    return _html(
        pages.sign_in_page(
            csrf_token=visitor.session.csrf_token,
            user_code=user_code,
            email=email,
            error=error,
            allow_signup=settings.allow_signup,
            upstream_name=upstream,
        ),
        status_code,
        context=context,
        session=visitor.session if visitor.new else None,
    )


CodeLookup = DeviceAuthorization | HTMLResponse


async def _look_up(
    request: Request, context: GatewayContext, db: AsyncSession, visitor: Visitor, user_code: str
) -> CodeLookup:
    """The device authorization a typed code names, or the page saying why there is none."""
    # Only a bounded prefix is kept as a key: the typed text is the client's to choose.
    code = normalise_user_code(user_code)[:16]
    address = _client_address(request)
    retry_after = await USER_CODES.retry_after(context.sessions, address=address, code=code)
    if retry_after:
        return _too_many(context, "Too many wrong codes were tried.", retry_after)
    authorization = None
    if len(code) == USER_CODE_LENGTH:
        authorization = await pending_authorization(db, code)
    if authorization is None:
        await USER_CODES.record_failure(context.sessions, address=address, code=code)
        return _html(
            pages.code_entry_page(
                account=visitor.account(),
                user_code=user_code,
                error="No such code. Check it against your terminal (it looks like ABCD-1234).",
            ),
            404,
            context=context,
        )
    return authorization


def _unusable(
    context: GatewayContext, visitor: Visitor, authorization: DeviceAuthorization, now: datetime
) -> HTMLResponse | None:
    """The page for a code that can no longer be approved or denied; None if it still can."""
    used = {
        "approved": "This code was already approved and has been used.",
        "consumed": "This code was already approved and has been used.",
        "denied": "This code was denied and can no longer be used.",
    }
    if authorization.status in used:
        message = used[authorization.status]
        title = "Code already used"
    elif authorization.expires_at <= now:
        message = "This code has expired."
        title = "Code expired"
    else:
        return None
    return _html(
        pages.message_page(title, message, hint=NEW_CODE_HINT, account=visitor.account()),
        410,
        context=context,
    )


@router.get("/activate", response_class=HTMLResponse)
async def activate(request: Request, context: ContextDep, user_code: str | None = None) -> Response:
    visitor = await _visitor(request, context)
    user_code = (user_code or "").strip()[:64] or None
    if visitor.user is None:
        return _sign_in(context, visitor, user_code)
    if not user_code:
        return _html(pages.code_entry_page(account=visitor.account()), context=context)
    async with context.sessions() as db:
        found = await _look_up(request, context, db, visitor, user_code)
    if isinstance(found, HTMLResponse):
        return found
    now = datetime.now(UTC)
    unusable = _unusable(context, visitor, found, now)
    if unusable is not None:
        return unusable
    return _html(
        pages.confirm_page(
            account=visitor.account(),
            csrf_token=visitor.session.csrf_token,
            user_code=display_user_code(found.user_code),
            client_id=found.client_id,
            requested_at=found.created_at,
            expires_at=found.expires_at,
            now=now,
        ),
        context=context,
    )


@router.post("/activate", response_class=HTMLResponse)
async def decide(request: Request, context: ContextDep) -> Response:
    visitor = await _visitor(request, context)
    form = await _form(request)
    if not _posted_by_page(visitor, form):
        return _forbidden(context)
    user_code = form.get("user_code", "").strip()[:64]
    if visitor.user is None:
        return _redirect(pages.activate_url(user_code=user_code), context=context)
    decision = form.get("decision")
    if decision not in ("approve", "deny") or not user_code:
        return _html(
            pages.message_page("Bad request", "Choose Approve or Deny on the code's page."),
            400,
            context=context,
        )
    async with context.sessions() as db, db.begin():
        found = await _look_up(request, context, db, visitor, user_code)
        if isinstance(found, HTMLResponse):
            return found
        decided = await decide_device_authorization(
            db, found.user_code, visitor.user.id, approve=decision == "approve"
        )
    if not decided:
        # Used or expired since the page was shown.
        async with context.sessions() as db:
            current = await pending_authorization(db, found.user_code)
        unusable = current and _unusable(context, visitor, current, datetime.now(UTC))
        return unusable or _html(
            pages.message_page("Code expired", "This code has expired.", hint=NEW_CODE_HINT),
            410,
            context=context,
        )
    logger.info(
        "device authorization %s",
        "approved" if decision == "approve" else "denied",
        extra={"user_id": str(visitor.user.id), "client_id": found.client_id},
    )
    if decision == "approve":
        page = pages.message_page(
            "Device connected",
            f"Approved: {found.client_id} is now signed in as {visitor.user.email}.",
            kind="success",
            hint="Return to your terminal; it finishes signing in within a few seconds. "
            "You can close this page.",
            account=visitor.account(),
        )
    else:
        page = pages.message_page(
            "Request denied",
            "Denied: the device was not signed in.",
            kind="success",
            hint="If you did not start this sign-in, someone may have sent you the code; "
            "nothing was shared with them.",
            account=visitor.account(),
        )
    return _html(page, context=context)


@router.post("/activate/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, context: ContextDep) -> Response:
    visitor = await _visitor(request, context)
    form = await _form(request)
    if not _posted_by_page(visitor, form):
        return _forbidden(context)
    user_code = form.get("user_code", "").strip()[:64] or None
    typed_email = form.get("email", "").strip()[:320]
    email = normalise_email(typed_email)
    password = form.get("password", "")
    if email is None or not password:
        return _sign_in(
            context,
            visitor,
            user_code,
            error="Enter your email and password.",
            email=typed_email,
            status_code=400,
        )
    address = _client_address(request)
    retry_after = await SIGN_INS.retry_after(context.sessions, address=address, email=email)
    if retry_after:
        return _too_many(context, "Too many failed sign-ins.", retry_after)
    async with context.sessions() as db:
        user = await authenticate_local(db, email, password)
    if user is None:
        await SIGN_INS.record_failure(context.sessions, address=address, email=email)
        return _sign_in(
            context,
            visitor,
            user_code,
            error="Wrong email or password.",
            email=typed_email,
            status_code=401,
        )
    await SIGN_INS.clear(context.sessions, "email", email)
    logger.info("signed in on the activation page", extra={"user_id": str(user.id)})
    return _redirect(
        pages.activate_url(user_code=user_code),
        context=context,
        session=BrowserSession.signed_in(user.id),
    )


def _sign_up_closed(context: GatewayContext) -> HTMLResponse:
    return _html(
        pages.message_page(
            "Sign-up is closed",
            "New accounts cannot be created here.",
            hint="Ask your administrator for an account.",
            link=("/activate", "Sign in"),
        ),
        403,
        context=context,
    )


@router.get("/activate/sign-up", response_class=HTMLResponse)
async def sign_up_form(
    request: Request, context: ContextDep, user_code: str | None = None
) -> Response:
    if not context.settings.allow_signup:
        return _sign_up_closed(context)
    visitor = await _visitor(request, context)
    return _html(
        pages.sign_up_page(
            csrf_token=visitor.session.csrf_token,
            user_code=(user_code or "").strip()[:64] or None,
            error=None,
        ),
        context=context,
        session=visitor.session if visitor.new else None,
    )


@router.post("/activate/sign-up", response_class=HTMLResponse)
async def sign_up(request: Request, context: ContextDep) -> Response:
    if not context.settings.allow_signup:
        return _sign_up_closed(context)
    visitor = await _visitor(request, context)
    form = await _form(request)
    if not _posted_by_page(visitor, form):
        return _forbidden(context)
    user_code = form.get("user_code", "").strip()[:64] or None
    typed_email = form.get("email", "").strip()[:320]
    name = form.get("name", "").strip()[:200]
    password = form.get("password", "")

    def again(error: str, status_code: int) -> HTMLResponse:
        page = pages.sign_up_page(
            csrf_token=visitor.session.csrf_token,
            user_code=user_code,
            email=typed_email,
            name=name,
            error=error,
        )
        return _html(page, status_code, context=context)

    email = normalise_email(typed_email)
    if email is None:
        return again("Enter a valid email address.", 400)
    problem = password_problem(password)
    if problem is not None:
        return again(problem, 400)
    try:
        async with context.sessions() as db, db.begin():
            user = await create_local_account(db, email, password, name or None)
    except AccountError as error:
        return again(str(error), 409)
    return _redirect(
        pages.activate_url(user_code=user_code),
        context=context,
        session=BrowserSession.signed_in(user.id),
    )


@router.post("/activate/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, context: ContextDep) -> Response:
    visitor = await _visitor(request, context)
    form = await _form(request)
    if not _posted_by_page(visitor, form):
        return _forbidden(context)
    return _redirect("/activate", context=context, session=BrowserSession.anonymous())


def _upstream_failed(context: GatewayContext, message: str, status_code: int) -> HTMLResponse:
    return _html(
        pages.message_page(
            "Sign-in failed", message, hint="Try again.", link=("/activate", "Back to sign-in")
        ),
        status_code,
        context=context,
    )


@router.get("/activate/oidc/login", response_class=HTMLResponse)
async def upstream_sign_in(
    request: Request, context: ContextDep, user_code: str | None = None
) -> Response:
    settings = context.settings
    if not settings.oidc_enabled:
        return _html(pages.message_page("Not found", "No such page."), 404, context=context)
    client = upstream_client(request.app, settings)
    request.session[PENDING_CODE_KEY] = (user_code or "").strip()[:64]
    try:
        redirect: Response = await client.authorize_redirect(
            request, f"{settings.base_url}{CALLBACK_PATH}"
        )
    except (OAuthError, httpx.HTTPError) as error:
        logger.warning("the sign-in provider is unreachable: %s", type(error).__name__)
        return _upstream_failed(context, "The sign-in provider could not be reached.", 502)
    for name, value in SECURITY_HEADERS.items():
        redirect.headers.setdefault(name, value)
    return redirect


@router.get(CALLBACK_PATH, response_class=HTMLResponse)
async def upstream_callback(request: Request, context: ContextDep) -> Response:
    settings = context.settings
    if not settings.oidc_enabled:
        return _html(pages.message_page("Not found", "No such page."), 404, context=context)
    client = upstream_client(request.app, settings)
    try:
        metadata = await client.load_server_metadata()
        issuer = metadata.get("issuer")
        if settings.oidc_issuer is None or str(issuer).rstrip("/") != settings.oidc_issuer.rstrip(
            "/"
        ):
            raise AccountError("The sign-in provider names another issuer than configured.")
        token = await client.authorize_access_token(
            request, claims_options={"iss": {"essential": True, "values": [issuer]}}
        )
        claims = upstream_claims(token.get("userinfo") or {}, issuer)
    except AccountError as error:
        return _upstream_failed(context, str(error), 403)
    except (OAuthError, JoseError, httpx.HTTPError, ValueError) as error:
        # The error's type only: descriptions may echo codes or tokens back.
        logger.warning("upstream sign-in refused: %s", type(error).__name__)
        return _upstream_failed(context, "The sign-in provider did not confirm who you are.", 401)
    async with context.sessions() as db, db.begin():
        user = await user_for_upstream_identity(db, claims)
    user_code = request.session.pop(PENDING_CODE_KEY, "") or None
    logger.info("signed in through the upstream provider", extra={"user_id": str(user.id)})
    return _redirect(
        pages.activate_url(user_code=user_code),
        context=context,
        session=BrowserSession.signed_in(user.id),
    )
