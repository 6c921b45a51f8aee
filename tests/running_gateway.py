"""The handle tests get on the session's gateway process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunningGateway:
    """A `ckrv-cloud serve gateway` process on the session's servers, with development sign-in."""

    url: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @staticmethod
    def token(email: str, tier: str = "free") -> str:
        return f"dev:{email}:{tier}"
