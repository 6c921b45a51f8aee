"""The HTML of the activation page: plain templates, every interpolated value escaped.

`render` escapes each value unless it is `Html` (markup this module built itself),
so text from a request or the database can only ever appear as text.
"""

from __future__ import annotations

import html
import string
from datetime import datetime
from urllib.parse import urlencode

KNOWN_CLIENTS = {"ckrv-cli": "the ckrv command-line tool"}


class Html(str):
    """Markup that is already safe to insert."""


NOTHING = Html("")


def render(template: str, **values: object) -> Html:
    escaped = {
        name: value if isinstance(value, Html) else html.escape(str(value), quote=True)
        for name, value in values.items()
    }
    return Html(string.Template(template).substitute(escaped))


def join(*parts: Html) -> Html:
    return Html("".join(parts))


def activate_url(path: str = "/activate", user_code: str | None = None) -> str:
    return f"{path}?{urlencode({'user_code': user_code})}" if user_code else path


STYLE = """
:root { color-scheme: light; --ink: #1f2330; --muted: #5d6475; --line: #e3e6ee;
  --accent: #3b47c4; --accent-dark: #2d379b; --danger: #b42318; --ok: #067647; }
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; flex-direction: column; align-items: center;
  justify-content: center; padding: 24px; background: #f4f5f9; color: var(--ink);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { width: 100%; max-width: 440px; background: #fff; border: 1px solid var(--line);
  border-radius: 14px; padding: 32px; box-shadow: 0 8px 24px rgba(31, 35, 48, .06); }
.brand { display: flex; align-items: center; gap: 10px; font-weight: 600; color: var(--muted);
  font-size: 14px; letter-spacing: .02em; margin-bottom: 24px; }
.mark { width: 26px; height: 26px; border-radius: 7px; background: var(--accent); color: #fff;
  display: inline-flex; align-items: center; justify-content: center; font-size: 14px; }
h1 { font-size: 22px; margin: 0 0 8px; }
p { margin: 0 0 16px; color: var(--muted); }
label { display: block; font-size: 14px; font-weight: 600; margin: 14px 0 6px; }
input[type=email], input[type=password], input[type=text] { width: 100%; padding: 10px 12px;
  border: 1px solid #cfd3df; border-radius: 8px; font: inherit; }
input:focus { outline: 2px solid var(--accent); outline-offset: 1px; border-color: var(--accent); }
button, .button { display: inline-block; width: 100%; margin-top: 20px; padding: 11px 16px;
  border-radius: 8px; border: 1px solid var(--accent); background: var(--accent); color: #fff;
  font: inherit; font-weight: 600; text-align: center; text-decoration: none; cursor: pointer; }
button:hover, .button:hover { background: var(--accent-dark); }
.secondary { background: #fff; color: var(--ink); border-color: #cfd3df; }
.secondary:hover { background: #f4f5f9; }
.choices { display: flex; gap: 12px; }
.choices form { flex: 1; }
.code { font: 600 30px/1.2 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  letter-spacing: .12em; text-align: center; padding: 14px; margin: 8px 0 16px;
  border: 1px dashed #b9bfd0; border-radius: 10px; background: #fafbfd; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 6px 16px; margin: 0 0 8px;
  font-size: 14px; }
dt { color: var(--muted); } dd { margin: 0; }
.notice { font-size: 14px; padding: 10px 12px; border-radius: 8px; margin: 0 0 16px; }
.error { background: #fef3f2; color: var(--danger); border: 1px solid #fecdca; }
.success { background: #ecfdf3; color: var(--ok); border: 1px solid #abefc6; }
.hint { font-size: 13px; color: var(--muted); margin-top: 16px; }
.divider { text-align: center; font-size: 13px; color: var(--muted); margin: 20px 0 0; }
.account { display: flex; justify-content: space-between; align-items: center; gap: 8px;
  margin-top: 24px; padding-top: 16px; border-top: 1px solid var(--line); font-size: 13px;
  color: var(--muted); }
.account span { overflow-wrap: anywhere; }
.account form { margin: 0; }
.link { width: auto; margin: 0; padding: 0; border: 0; background: none; color: var(--accent);
  font-weight: 400; font-size: 13px; white-space: nowrap; }
.link:hover { background: none; text-decoration: underline; }
a { color: var(--accent); }
footer { margin-top: 16px; font-size: 12px; color: var(--muted); }
"""

LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>$title · Chakravarti Cloud</title>
<style>$style</style>
</head>
<body>
<main>
<div class="brand"><span class="mark">C</span>Chakravarti Cloud</div>
$body
$account
</main>
<footer>Signing in a device with a code (OAuth 2.0 device authorization)</footer>
</body>
</html>
"""


def layout(title: str, body: Html, account: Html = NOTHING) -> Html:
    return render(LAYOUT, title=title, style=Html(STYLE), body=body, account=account)


def _csrf(csrf_token: str) -> Html:
    return render('<input type="hidden" name="csrf_token" value="$token">', token=csrf_token)


def _notice(message: str | None, kind: str = "error") -> Html:
    if not message:
        return Html("")
    role = "alert" if kind == "error" else "status"
    return render(
        '<div class="notice $kind" role="$role">$message</div>',
        kind=kind,
        role=role,
        message=message,
    )


def account_bar(email: str, csrf_token: str) -> Html:
    return render(
        """<div class="account"><span>Signed in as <strong>$email</strong></span>
<form method="post" action="/activate/sign-out">$csrf
<button class="link" type="submit">Sign out</button></form></div>""",
        email=email,
        csrf=_csrf(csrf_token),
    )


def sign_in_page(
    *,
    csrf_token: str,
    user_code: str | None,
    email: str = "",
    error: str | None = None,
    allow_signup: bool,
    upstream_name: str | None,
) -> Html:
    code_line = (
        render("<p>Sign in to confirm the code <strong>$code</strong>.</p>", code=user_code)
        if user_code
        else Html("<p>Sign in to connect the ckrv command-line tool to your account.</p>")
    )
    upstream = (
        render(
            '<p class="divider">or</p><a class="button secondary" href="$href">'
            "Sign in with $name</a>",
            href=activate_url("/activate/oidc/login", user_code),
            name=upstream_name,
        )
        if upstream_name
        else Html("")
    )
    signup = (
        render(
            '<p class="hint">New here? <a href="$href">Create an account</a></p>',
            href=activate_url("/activate/sign-up", user_code),
        )
        if allow_signup
        else Html("")
    )
    body = render(
        """<h1>Sign in</h1>
$code_line
$notice
<form method="post" action="/activate/sign-in">$csrf
<input type="hidden" name="user_code" value="$user_code">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="$email">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
$upstream
$signup""",
        code_line=code_line,
        notice=_notice(error),
        csrf=_csrf(csrf_token),
        user_code=user_code or "",
        email=email,
        upstream=upstream,
        signup=signup,
    )
    return layout("Sign in", body)


def sign_up_page(
    *, csrf_token: str, user_code: str | None, email: str = "", name: str = "", error: str | None
) -> Html:
    body = render(
        """<h1>Create an account</h1>
<p>New accounts start on the free tier.</p>
$notice
<form method="post" action="/activate/sign-up">$csrf
<input type="hidden" name="user_code" value="$user_code">
<label for="name">Name <span class="hint">(optional)</span></label>
<input id="name" name="name" type="text" autocomplete="name" maxlength="200" value="$name">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="$email">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="new-password" required
  minlength="10">
<button type="submit">Create account</button>
</form>
<p class="hint">Already have an account? <a href="$sign_in">Sign in</a></p>""",
        notice=_notice(error),
        csrf=_csrf(csrf_token),
        user_code=user_code or "",
        name=name,
        email=email,
        sign_in=activate_url("/activate", user_code),
    )
    return layout("Create an account", body)


def code_entry_page(*, account: Html, user_code: str = "", error: str | None = None) -> Html:
    body = render(
        """<h1>Connect a device</h1>
<p>Enter the code your terminal shows after <code>ckrv cloud login</code>.</p>
$notice
<form method="get" action="/activate">
<label for="user_code">Code</label>
<input id="user_code" name="user_code" type="text" autocomplete="off" autocapitalize="characters"
  spellcheck="false" placeholder="ABCD-1234" required value="$user_code">
<button type="submit">Continue</button>
</form>""",
        notice=_notice(error),
        user_code=user_code,
    )
    return layout("Connect a device", body, account)


def _describe_client(client_id: str) -> Html:
    known = KNOWN_CLIENTS.get(client_id)
    if known is None:
        return render("<code>$client</code>", client=client_id)
    return render("$known (<code>$client</code>)", known=known.capitalize(), client=client_id)


def confirm_page(
    *,
    account: Html,
    csrf_token: str,
    user_code: str,
    client_id: str,
    requested_at: datetime,
    expires_at: datetime,
    now: datetime,
) -> Html:
    minutes = max(1, round((expires_at - now).total_seconds() / 60))
    decision_form = """<form method="post" action="/activate">$csrf
<input type="hidden" name="user_code" value="$user_code">
<input type="hidden" name="decision" value="$decision">
<button class="$style" type="submit">$label</button></form>"""
    body = render(
        """<h1>Approve this sign-in?</h1>
<p>A device asks to use Chakravarti Cloud as you. Approve only if you started
<code>ckrv cloud login</code> yourself and your terminal shows this code:</p>
<div class="code" id="user-code">$user_code</div>
<dl>
<dt>Client</dt><dd id="client">$client</dd>
<dt>Requested</dt><dd>$requested UTC</dd>
<dt>Expires</dt><dd id="expires">in $minutes min ($expires UTC)</dd>
</dl>
<div class="choices">$deny$approve</div>""",
        user_code=user_code,
        client=_describe_client(client_id),
        requested=f"{requested_at:%Y-%m-%d %H:%M}",
        minutes=minutes,
        expires=f"{expires_at:%H:%M}",
        deny=render(
            decision_form,
            csrf=_csrf(csrf_token),
            user_code=user_code,
            decision="deny",
            style="secondary",
            label="Deny",
        ),
        approve=render(
            decision_form,
            csrf=_csrf(csrf_token),
            user_code=user_code,
            decision="approve",
            style="primary",
            label="Approve",
        ),
    )
    return layout("Approve this sign-in?", body, account)


def message_page(
    title: str,
    message: str,
    *,
    kind: str = "error",
    hint: str | None = None,
    account: Html = NOTHING,
    link: tuple[str, str] | None = None,
) -> Html:
    body = render(
        "<h1>$title</h1>$notice$hint$link",
        title=title,
        notice=_notice(message, kind),
        hint=render('<p class="hint">$hint</p>', hint=hint) if hint else Html(""),
        link=render(
            '<a class="button secondary" href="$href">$label</a>', href=link[0], label=link[1]
        )
        if link
        else Html(""),
    )
    return layout(title, body, account)
