"""Real git servers on loopback for the tests, and sample repositories for them to serve.

- `GitHttpServer`: git's smart HTTP protocol (`git http-backend`, run as CGI) behind a small
  threaded HTTPS server that wants HTTP basic auth with its access token as the password (any
  user name, as GitHub takes). Its certificate comes from a CA of its own: give git
  `client_environment` (`GIT_SSL_CAINFO`) to trust it.
- `GitSshServer`: OpenSSH's `sshd` with a configuration, host key and authorized key of its
  own in a temporary folder, letting in the current user with a generated deploy key only
  (`apt-get install openssh-server` provides it; tests that need it are skipped without it).
- `create_sample_repository`: a bare repository with a `main` branch, for either server.

The session fixtures `git_http_server` and `git_ssh_server` start them once per test session;
import them into a conftest.py to use them. Tests using them must be marked `integration`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import getpass
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.process import Supervised
from tests.conftest import run_on_private_loop
from tests.unit.cli.git_repos import git

LOOPBACK = "127.0.0.1"
SAMPLE_FILES = {
    "README.md": "# Sample\n\nA repository for Chakravarti Cloud's tests.\n",
    "src/greeting.py": 'def greeting(name: str) -> str:\n    return f"Hello, {name}!"\n',
}
_CERTIFICATE_DAYS = 2


@dataclass(frozen=True)
class SampleRepository:
    path: Path
    """The bare repository."""
    head: str
    """The commit `main` points at."""


def create_sample_repository(
    parent: Path, name: str, files: dict[str, str] | None = None
) -> SampleRepository:
    """A bare repository `<parent>/<name>.git` whose `main` holds `files` in one commit."""
    work = Path(tempfile.mkdtemp(prefix="ckrv-sample-"))
    try:
        git(work, "init", "--quiet", "--initial-branch=main")
        for relative, text in (files if files is not None else SAMPLE_FILES).items():
            (work / relative).parent.mkdir(parents=True, exist_ok=True)
            (work / relative).write_text(text)
        git(work, "add", "--all")
        git(
            work,
            "-c",
            "user.name=Sample Author",
            "-c",
            "user.email=author@example.com",
            "-c",
            "commit.gpgSign=false",
            "commit",
            "--quiet",
            "--message",
            "Initial commit",
        )
        path = parent / f"{name}.git"
        git(parent, "clone", "--quiet", "--bare", str(work), str(path))
        return SampleRepository(path, git(path, "rev-parse", "main"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class TlsFiles:
    ca_certificate: Path
    certificate: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_files(folder: Path) -> TlsFiles:
    """A throw-away CA and a certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    lifetime = datetime.timedelta(days=_CERTIFICATE_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ckrv test CA"))
        .issuer_name(_name("ckrv test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(LOOPBACK))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    files.ca_certificate.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


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
    server: _GitHttpd

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
        self.server.users.append(user)
        body = self._body()
        path, _, query = self.path.partition("?")
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


class _GitHttpd(ThreadingHTTPServer):
    daemon_threads = True
    # Many clones at once (jobs dispatched together) must not find the queue full.
    request_queue_size = 128

    def __init__(self, port: int, repositories: Path, token: str, tls: ssl.SSLContext) -> None:
        super().__init__((LOOPBACK, port), _GitHttpHandler)
        self.repositories = repositories
        self.token = token
        self.tls = tls
        self.users: list[str] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake in the connection's own thread: done in `accept`, one slow or
        # broken handshake would hold up every other connection waiting behind it.
        with self.tls.wrap_socket(request, server_side=True) as connection:
            super().finish_request(connection, client_address)


class GitHttpServer:
    """Git over HTTPS with basic auth, serving the bare repositories under `repositories`."""

    def __init__(self, repositories: Path, tls_dir: Path) -> None:
        self.repositories = repositories
        self.token = f"ckrv_pat_{secrets.token_urlsafe(24)}"
        self.tls = make_tls_files(tls_dir)
        (self.port,) = free_ports(1)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.certificate, self.tls.key)
        self._httpd = _GitHttpd(self.port, repositories, self.token, context)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="git-http-server", daemon=True
        )

    @property
    def users(self) -> list[str]:
        """The user names of the requests let in so far."""
        return self._httpd.users

    @property
    def client_environment(self) -> dict[str, str]:
        """What git needs in its environment to trust the server's certificate."""
        return {"GIT_SSL_CAINFO": str(self.tls.ca_certificate)}

    def url_for(self, repository: Path) -> str:
        """The https URL of a bare repository under `repositories`."""
        return f"https://{LOOPBACK}:{self.port}/{repository.relative_to(self.repositories)}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def find_sshd() -> Path | None:
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


class GitSshServer(Supervised):
    """`sshd` on a loopback port, letting the current user in with `deploy_key` only.

    Git runs over it as over any ssh host: `url_for(path)` reaches any bare repository
    the user can read.
    """

    def __init__(self, sshd: Path, state_dir: Path) -> None:
        super().__init__("sshd", state_dir / "sshd.log")
        self.sshd = sshd
        self.state_dir = state_dir
        self.user = getpass.getuser()
        (self.port,) = free_ports(1)
        self.config_path = state_dir / "sshd_config"
        self.host_key_path = state_dir / "host_key"
        self.deploy_key_path = state_dir / "deploy_key"

    @property
    def deploy_key(self) -> str:
        """The private key sshd lets in, in OpenSSH's format."""
        return self.deploy_key_path.read_text()

    @property
    def known_hosts(self) -> str:
        """A known_hosts line for the server, as `ssh` looks it up on this port."""
        key_type, key = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        return f"[{LOOPBACK}]:{self.port} {key_type} {key}\n"

    def url_for(self, repository: Path) -> str:
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{repository.resolve()}"

    async def prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key_path, "ckrv test host")
        _keygen(self.deploy_key_path, "ckrv test deploy key")
        authorized = self.state_dir / "authorized_keys"
        shutil.copyfile(self.deploy_key_path.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        if os.geteuid() == 0:
            # sshd started by root separates privileges into this (compiled-in) empty folder.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.config_path.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {LOOPBACK}\n"
            f"HostKey {self.host_key_path}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"AllowUsers {self.user}\n"
            "PidFile none\n"
            # The temporary folders are not laid out the way sshd checks a home folder.
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
        )

    def command(self) -> list[str]:
        return [str(self.sshd), "-D", "-e", "-f", str(self.config_path)]

    async def is_ready(self) -> bool:
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        try:
            banner = await reader.readline()
        finally:
            writer.close()
        return banner.startswith(b"SSH-2.0-")


@pytest.fixture(scope="session")
def git_repositories() -> Iterator[Path]:
    """Where the git servers' repositories live; make them with `create_sample_repository`."""
    path = Path(tempfile.mkdtemp(prefix="ckrv-git-repositories-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def git_http_server(git_repositories: Path) -> Iterator[GitHttpServer]:
    """Git over HTTPS with basic auth (`.token` is the password), for the session."""
    tls_dir = Path(tempfile.mkdtemp(prefix="ckrv-git-tls-"))
    server = GitHttpServer(git_repositories, tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tls_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def git_ssh_server() -> Iterator[GitSshServer]:
    """Git over ssh with a deploy key (`.deploy_key`), for the session; skips without sshd."""
    sshd = find_sshd()
    if sshd is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    state_dir = Path(tempfile.mkdtemp(prefix="ckrv-sshd-"))
    server = GitSshServer(sshd, state_dir)
    run_on_private_loop(server.start())
    try:
        yield server
    finally:
        run_on_private_loop(server.stop())
        shutil.rmtree(state_dir, ignore_errors=True)
