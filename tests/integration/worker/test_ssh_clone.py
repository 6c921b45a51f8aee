"""Jobs over ssh with a deploy key, under either host key policy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ckrv.services.worker.result import JobResult
from tests.git_servers import GitSshServer, create_sample_repository
from tests.integration.worker.conftest import Uploads
from tests.unit.worker.worker_runs import make_job, run_worker, spec_text

pytestmark = pytest.mark.integration

DEPLOY_KEY = {"provider": "generic", "credential_type": "deploy_key"}


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_a_deploy_key_clones_over_ssh(
    policy: str,
    git_ssh_server: GitSshServer,
    git_repositories: Path,
    uploads: Uploads,
    tmp_path: Path,
) -> None:
    sample = create_sample_repository(git_repositories, f"ssh-{uploads.job_id.hex[:8]}")
    known_hosts = git_ssh_server.known_hosts if policy == "strict" else None
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=git_ssh_server.url_for(sample.path),
        spec_content=spec_text(["echo 'over ssh' > SSH.md"]),
        upload_urls=uploads.urls,
        credential=DEPLOY_KEY,
        ssh_host_keys={"policy": policy, "known_hosts": known_hosts},
    )

    run = run_worker(job, tmp_path, credential=git_ssh_server.deploy_key)

    assert run.exit_code == 0, run.stdout + run.stderr
    result = JobResult.model_validate_json(uploads.read("result.json"))
    assert result.files_changed == ("SSH.md",)
    assert result.base_commit == sample.head
    assert "+over ssh" in uploads.read("diff.patch").decode()
    key_lines = [line for line in git_ssh_server.deploy_key.splitlines() if "-----" not in line]
    assert not any(line in run.stdout + run.stderr for line in key_lines)
    assert not (run.workspace / "access").exists()


def test_a_host_key_other_than_the_known_one_is_refused(
    git_ssh_server: GitSshServer, git_repositories: Path, uploads: Uploads, tmp_path: Path
) -> None:
    sample = create_sample_repository(git_repositories, f"ssh-mitm-{uploads.job_id.hex[:8]}")
    # The server's address with a key it does not have, as if someone else answered there.
    other_key = tmp_path / "other_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)],
        check=True,
        capture_output=True,
    )
    key_type, key = other_key.with_suffix(".pub").read_text().split()[:2]
    host = git_ssh_server.known_hosts.split()[0]
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=git_ssh_server.url_for(sample.path),
        spec_content=spec_text(["echo never > NEVER.md"]),
        upload_urls=uploads.urls,
        credential=DEPLOY_KEY,
        ssh_host_keys={"policy": "strict", "known_hosts": f"{host} {key_type} {key}\n"},
    )

    run = run_worker(job, tmp_path, credential=git_ssh_server.deploy_key)

    assert run.exit_code == 1, run.stdout
    assert run.final["reason"] == "clone_failed"
    assert "Host key verification failed" in run.final["message"]
    assert uploads.stored() == set()
