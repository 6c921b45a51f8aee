"""Which failed clones the worker tries again: the network's and the server's, not refusals."""

from __future__ import annotations

import pytest

from ckrv.services.worker.git import is_transient_clone_failure

TRANSIENT = [
    "error: RPC failed; curl 35 gnutls_handshake() failed: An unexpected TLS packet was "
    "received.\nfatal: expected flush after ref listing",
    "fatal: unable to access 'https://h/r.git/': The requested URL returned error: 503",
    "fatal: unable to access 'https://h/r.git/': Failed to connect to h port 443 after 3 ms",
    "fatal: unable to access 'https://h/r.git/': OpenSSL SSL_read: SSL_ERROR_SYSCALL, errno 104",
    "error: RPC failed; curl 56 Recv failure: Connection reset by peer\nfatal: early EOF",
    "kex_exchange_identification: read: Connection reset by peer\n"
    "fatal: Could not read from remote repository.",
]
REFUSED = [
    "fatal: Authentication failed for 'https://h/r.git/'",
    "remote: Repository not found.\nfatal: repository 'https://h/r.git/' not found",
    "fatal: unable to access 'https://h/r.git/': The requested URL returned error: 403",
    "git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.",
    "Host key verification failed.\nfatal: Could not read from remote repository.",
    "fatal: unable to access 'https://h/r.git/': Could not resolve host: h",
]


@pytest.mark.parametrize("stderr", TRANSIENT)
def test_failures_of_the_network_or_server_are_tried_again(stderr: str) -> None:
    assert is_transient_clone_failure(stderr)


@pytest.mark.parametrize("stderr", REFUSED)
def test_refusals_are_not_tried_again(stderr: str) -> None:
    assert not is_transient_clone_failure(stderr)
