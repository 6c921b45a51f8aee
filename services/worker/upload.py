"""Uploading the artifacts with HTTP PUT to presigned URLs: the workload holds no storage keys.

A connection error, a timeout, a 5xx, 408 or 429 is retried with exponential backoff; any
other refusal (an expired or tampered URL answers 403) fails at once. A URL is logged without
its query, which holds the signature.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ckrv.services.worker.job_input import ArtifactName
from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.outcome import InfrastructureFailure

if TYPE_CHECKING:
    import httpx

UPLOAD_ATTEMPTS = 4
FIRST_RETRY_DELAY_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 10.0
# Per read or write of the connection, not for the whole body.
IO_TIMEOUT_SECONDS = 60.0
_RETRIED_STATUSES = frozenset({408, 429})
_MAX_REASON_CHARACTERS = 300


def without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRIED_STATUSES


def _refusal(response: httpx.Response) -> str:
    """The status and the storage's reason: an S3 error's code and message, not its whole
    body (which may echo the request's signing details)."""
    text = response.text
    code, message = (re.search(f"<{tag}>([^<]*)</{tag}>", text) for tag in ("Code", "Message"))
    if code is not None:
        reason = code[1] + (f": {message[1]}" if message is not None else "")
    else:
        reason = text.strip()[:_MAX_REASON_CHARACTERS]
    return f"HTTP {response.status_code} {reason}".strip()


def put_file(
    client: httpx.Client,
    url: str,
    path: Path,
    log: JobLog,
    *,
    attempts: int = UPLOAD_ATTEMPTS,
    first_retry_delay: float = FIRST_RETRY_DELAY_SECONDS,
) -> None:
    """PUT the file's bytes to `url`; `InfrastructureFailure` (`upload_failed`) if it cannot."""
    import httpx

    target = without_query(url)
    delay = first_retry_delay
    for attempt in range(1, attempts + 1):
        try:
            # Streamed from the file, with a length: presigned S3 PUTs take no chunked bodies.
            with path.open("rb") as body:
                response = client.put(
                    url, content=body, headers={"Content-Length": str(path.stat().st_size)}
                )
        except httpx.TransportError as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if response.is_success:
                return
            problem = _refusal(response)
            if not _retryable(response.status_code):
                raise InfrastructureFailure(
                    "upload_failed", f"{target} refused {path.name}: {problem}"
                )
        if attempt < attempts:
            log.warning(f"uploading {path.name} failed ({problem}); trying again in {delay:g}s")
            time.sleep(delay)
            delay *= 2
    raise InfrastructureFailure(
        "upload_failed",
        f"could not upload {path.name} to {target} in {attempts} attempts: {problem}",
    )


def upload_files(
    urls: Mapping[ArtifactName, str], files: Mapping[ArtifactName, Path], log: JobLog
) -> None:
    """PUT each file to its URL, in the order given."""
    # Imported here: httpx takes ~100 ms to import, and only this last step needs it.
    import httpx

    timeout = httpx.Timeout(IO_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    with httpx.Client(timeout=timeout) as client:
        for name, path in files.items():
            put_file(client, urls[name], path, log)
            log.info(f"uploaded {name} ({path.stat().st_size} bytes)")
