"""Secrets masked before a line is published: the job's credential and the common token formats."""

from __future__ import annotations

import pytest

from ckrv.services.log_relay.redaction import Redactor

# Made-up values of the right shapes; none of them was ever valid anywhere.
GITHUB_CLASSIC = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_OAUTH = "gho_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
GITHUB_FINE_GRAINED = (
    "github_pat_11ABCDEFG0" + "abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUV"
)
GITLAB = "glpat-" + "xYz12AbC34dEf56GhI78"
SLACK = "xoxb-1234567890-0987654321-" + "AbCdEfGhIjKlMnOpQrStUvWx"
AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
CKRV_TOKEN = "ckrv_" + "Qm9vbS1ib29tLXRoaXMtaXMtbm90LWEtdG9rZW4hIQx"  # as long as real ones
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjE3MDAwMDAwMDB9"
    ".c2lnbmF0dXJlLW5vdC1yZWFsLWF0LWFsbA"
)
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDmadeupmadeupmadeupmadeupmadeupmadeupAAAAJgAAAAAAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    "secret",
    [GITHUB_CLASSIC, GITHUB_OAUTH, GITHUB_FINE_GRAINED, GITLAB, SLACK, AWS_KEY_ID, CKRV_TOKEN, JWT],
)
def test_tokens_of_common_formats_are_masked(secret: str) -> None:
    assert Redactor().redact(f"export TOKEN={secret} # keep it safe") == (
        "export TOKEN=[redacted] # keep it safe"
    )


def test_the_job_s_credential_is_masked_whatever_its_shape() -> None:
    redactor = Redactor(["plain-pat-without-a-prefix-42"])

    assert redactor.redact("cloning with plain-pat-without-a-prefix-42!") == (
        "cloning with [redacted]!"
    )


def test_each_long_line_of_a_multi_line_credential_is_masked_on_its_own() -> None:
    redactor = Redactor([PRIVATE_KEY])
    key_line = PRIVATE_KEY.splitlines()[1]

    assert redactor.redact(f"agent saw {key_line}") == "agent saw [redacted]"


def test_a_bearer_token_goes_and_the_word_stays() -> None:
    assert Redactor().redact("Authorization: Bearer abc.DEF-123_456~xyz==") == (
        "Authorization: Bearer [redacted]"
    )


def test_a_password_in_a_url_goes() -> None:
    text = "fetching https://x-access-token:hunter2hunter2@git.example.com/r"

    assert Redactor().redact(text) == "fetching https://[redacted]@git.example.com/r"


def test_a_private_key_printed_line_by_line_is_masked_from_begin_to_end() -> None:
    redactor = Redactor()
    lines = ["here it is:", *PRIVATE_KEY.splitlines(), "and that was all"]

    masked = [redactor.redact(line) for line in lines]

    assert masked == [
        "here it is:",
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "and that was all",
    ]
    assert not redactor.inside_private_key


def test_a_redactor_resumed_inside_a_key_masks_until_its_end() -> None:
    redactor = Redactor(inside_private_key=True)

    assert redactor.redact(PRIVATE_KEY.splitlines()[2]) == "[redacted]"
    assert redactor.redact("-----END OPENSSH PRIVATE KEY----- done") == "[redacted] done"
    assert redactor.redact("visible again") == "visible again"


def test_a_whole_key_in_one_message_is_masked_with_what_surrounds_it_kept() -> None:
    assert Redactor().redact(f"key: {PRIVATE_KEY}\nbye") == "key: [redacted]\nbye"


@pytest.mark.parametrize(
    "text",
    [
        "Compiling 42 modules in 3.2 s",
        "see https://github.com/acme/app/pull/7 for ghp_ tokens",
        "AKIA is how AWS key ids begin",
        "def ckrv_settings(): ...",
        "git@github.com:acme/app.git",
    ],
)
def test_ordinary_text_is_left_as_it_is(text: str) -> None:
    assert Redactor(["a-credential-that-is-not-there"]).redact(text) == text
