"""The test git HTTPS server's own process: `git http-backend` behind a threaded HTTPS server.

Run by `tests.git_servers.GitHttpServer` as `python -m tests.git_https_backend`, so TLS
and the CGI children live apart from the test process (its threads, event loops and
descriptors). Settings come from the environment: `GIT_HTTPS_PORT`, `GIT_HTTPS_ROOT` (the
bare repositories), `GIT_HTTPS_TOKEN` (the basic-auth password), `GIT_HTTPS_CERTIFICATE`,
`GIT_HTTPS_KEY`, and `GIT_HTTPS_USERS` (a file that gets one line per authorised request:
its user name). Every failed connection is reported on stderr with its traceback.

A repository holding a file `ckrv-test-failures` with a number N > 0 gets its next N
authorised requests answered 503 Service Unavailable, as a struggling git host would.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

LOOPBACK = "127.0.0.1"
FAILURES_FILE = "ckrv-test-failures"


def _cgi_response(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI program's output into status, headers and body."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = output.partition(separator)
        if found:
            break
    else:
        head, body = output, b""
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name, value.strip()))
    return status, headers, body


class _GitHttpHandler(BaseHTTPRequestHandler):
    server: GitHttpd

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: git clients make many requests."""

    def _user(self) -> str | None:
        """The user name of a request whose password is the token; None otherwise."""
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return None
        return user if secrets.compare_digest(password, self.server.token) else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, up to the empty line
            pass
        return b"".join(chunks)

    def _serve(self) -> None:
        user = self._user()
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.record_user(user)
        body = self._body()
        path, _, query = self.path.partition("?")
        if self.server.take_failure(unquote(path)):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.server.repositories),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": self.client_address[0],
        }
        backend = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=environment,
            capture_output=True,
            check=False,
            timeout=60,
        )
        status, headers, payload = _cgi_response(backend.stdout)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitHttpd(ThreadingHTTPServer):
    daemon_threads = True
    # Many clones at once (jobs dispatched together) must not find the queue full.
    request_queue_size = 128

    def __init__(
        self, port: int, repositories: Path, token: str, tls: ssl.SSLContext, users: Path
    ) -> None:
        super().__init__((LOOPBACK, port), _GitHttpHandler)
        self.repositories = repositories
        self.token = token
        self.tls = tls
        self._users = users.open("a", encoding="utf-8")
        self._users_lock = threading.Lock()  # and the failure counts

    def record_user(self, user: str) -> None:
        with self._users_lock:
            self._users.write(f"{user}\n")
            self._users.flush()

    def take_failure(self, path: str) -> bool:
        """Whether the request for `path` is one its repository asked to fail."""
        repository, found, _ = path.partition(".git/")
        if not found:
            return False
        failures = self.repositories / f"{repository.lstrip('/')}.git" / FAILURES_FILE
        with self._users_lock:
            try:
                left = int(failures.read_text())
            except FileNotFoundError:
                return False
            if left <= 0:
                return False
            failures.write_text(str(left - 1))
            return True

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake in the connection's own thread: done in `accept`, one slow or
        # broken handshake would hold up every other connection waiting behind it.
        with self.tls.wrap_socket(request, server_side=True) as connection:
            super().finish_request(connection, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"connection from {client_address} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()


def main() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.environ["GIT_HTTPS_CERTIFICATE"], os.environ["GIT_HTTPS_KEY"])
    httpd = GitHttpd(
        int(os.environ["GIT_HTTPS_PORT"]),
        Path(os.environ["GIT_HTTPS_ROOT"]),
        os.environ["GIT_HTTPS_TOKEN"],
        context,
        Path(os.environ["GIT_HTTPS_USERS"]),
    )
    # serve_forever must be stopped from another thread; SIGTERM asks for exactly that.
    signal.signal(
        signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start()
    )
    print(f"serving https://{LOOPBACK}:{httpd.server_address[1]}", flush=True)
    httpd.serve_forever()
    httpd.server_close()


if __name__ == "__main__":
    main()
