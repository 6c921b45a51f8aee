"""Masking secrets in log messages before they are published: the job's own, and well-known formats.

The worker already hides the job's git credential in its lines; this is the second
line of defence, for whatever an agent prints: the credential's value, tokens of
the common services (GitHub, GitLab, Slack, AWS, our own API tokens), JWTs,
`Bearer` tokens, passwords in URLs and private key blocks. A private key printed
line by line is masked from its `BEGIN` line to its `END` line, so the redactor
remembers, from one message to the next, whether it is inside one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ckrv.services.gateway.identity.flows import API_TOKEN_PREFIX
from ckrv.services.worker.joblog import REDACTED, secret_fragments

# Each whole match is a secret.
SECRET_PATTERNS = (
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bxox[a-z]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(rf"\b{API_TOKEN_PREFIX}[A-Za-z0-9_-]{{43,}}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
)
# The secret is the token after the scheme word, which stays readable.
BEARER_TOKEN = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/-]{8,}=*", re.IGNORECASE)
# `https://user:password@host`: the user and password go.
URL_PASSWORD = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+@")
PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
PRIVATE_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")


class Redactor:
    """Masks secrets in one workload's messages, taken in the order they were written."""

    def __init__(self, secrets: Iterable[str] = (), *, inside_private_key: bool = False) -> None:
        fragments = {fragment for secret in secrets for fragment in secret_fragments(secret)}
        # Longest first, so a whole secret is replaced before the parts it contains.
        self._fragments = sorted(fragments, key=len, reverse=True)
        self.inside_private_key = inside_private_key
        """Whether the last message ended inside a private key block (saved across restarts)."""

    def redact(self, text: str) -> str:
        for fragment in self._fragments:
            text = text.replace(fragment, REDACTED)
        text = self._mask_private_keys(text)
        for pattern in SECRET_PATTERNS:
            text = pattern.sub(REDACTED, text)
        text = BEARER_TOKEN.sub(rf"\g<1>{REDACTED}", text)
        return URL_PASSWORD.sub(f"{REDACTED}@", text)

    def _mask_private_keys(self, text: str) -> str:
        kept: list[str] = []
        position = 0
        while position < len(text):
            if self.inside_private_key:
                end = PRIVATE_KEY_END.search(text, position)
                kept.append(REDACTED)
                if end is None:
                    return "".join(kept)
                self.inside_private_key = False
                position = end.end()
            else:
                begin = PRIVATE_KEY_BEGIN.search(text, position)
                if begin is None:
                    kept.append(text[position:])
                    return "".join(kept)
                kept.append(text[position : begin.start()])
                self.inside_private_key = True
                position = begin.start()
        return "".join(kept)
