"""Real git servers on loopback for the tests, and sample repositories for them to serve.

- `GitHttpServer`: git's smart HTTP protocol (`git http-backend`, run as CGI) behind a small
  threaded HTTPS server in a process of its own (`tests.git_https_backend`) that wants HTTP
  basic auth with its access token as the password (any user name, as GitHub takes). Its
  certificate comes from a CA of its own: give git `client_environment` (`GIT_SSL_CAINFO`) to
  trust it.
- `GitSshServer`: OpenSSH's `sshd` with a configuration, host key and authorized key of its
  own in a temporary folder, letting in the current user with a generated deploy key only
  (`apt-get install openssh-server` provides it; tests that need it are skipped without it).
- `create_sample_repository`: a bare repository with a `main` branch, for either server.

The session fixtures `git_http_server` and `git_ssh_server` start them once per test session;
import them into a conftest.py to use them. Tests using them must be marked `integration`.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.process import Supervised
from tests.conftest import run_on_private_loop
from tests.git_https_backend import FAILURES_FILE
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


class GitHttpServer(Supervised):
    """Git over HTTPS with basic auth, serving the bare repositories under `repositories`.

    The server runs in a process of its own (`tests.git_https_backend`); its log, with a
    traceback for every failed connection, is `state_dir/git-https.log`.
    """

    def __init__(self, repositories: Path, state_dir: Path) -> None:
        super().__init__("git-https", state_dir / "git-https.log")
        self.repositories = repositories
        self.token = f"ckrv_pat_{secrets.token_urlsafe(24)}"
        self.tls = make_tls_files(state_dir)
        (self.port,) = free_ports(1)
        self._users_path = state_dir / "users"
        self._users_path.touch()
        self._probe_context = ssl.create_default_context(cafile=self.tls.ca_certificate)

    @property
    def users(self) -> list[str]:
        """The user names of the requests let in so far."""
        return self._users_path.read_text().splitlines()

    @property
    def client_environment(self) -> dict[str, str]:
        """What git needs in its environment to trust the server's certificate."""
        return {"GIT_SSL_CAINFO": str(self.tls.ca_certificate)}

    def url_for(self, repository: Path) -> str:
        """The https URL of a bare repository under `repositories`."""
        return f"https://{LOOPBACK}:{self.port}/{repository.relative_to(self.repositories)}"

    def failed_connections(self) -> str:
        """What the server logged about connections that failed (empty when none did)."""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return log[log.find("connection from") :] if "connection from" in log else ""

    def fail_next_requests(self, repository: Path, count: int) -> None:
        """Answer the next `count` requests for `repository` with 503 Service Unavailable."""
        (repository / FAILURES_FILE).write_text(str(count))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.git_https_backend"]

    def environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "GIT_HTTPS_PORT": str(self.port),
            "GIT_HTTPS_ROOT": str(self.repositories),
            "GIT_HTTPS_TOKEN": self.token,
            "GIT_HTTPS_CERTIFICATE": str(self.tls.certificate),
            "GIT_HTTPS_KEY": str(self.tls.key),
            "GIT_HTTPS_USERS": str(self._users_path),
        }

    async def is_ready(self) -> bool:
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port, ssl=self._probe_context)
        try:
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            status_line = await reader.readline()
        finally:
            writer.close()
        return status_line.startswith(b"HTTP/1.0 401")


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
    state_dir = Path(tempfile.mkdtemp(prefix="ckrv-git-https-"))
    server = GitHttpServer(git_repositories, state_dir)
    run_on_private_loop(server.start())
    try:
        yield server
    finally:
        run_on_private_loop(server.stop())
        failures = server.failed_connections()
        shutil.rmtree(state_dir, ignore_errors=True)
    if failures:
        # Clones retry, so a failed connection may not fail a test: the warning summary shows it.
        warnings.warn(f"the test git HTTPS server's failed connections:\n{failures}", stacklevel=1)


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
