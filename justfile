# Chakravarti Cloud developer recipes. Run through ./dev, which prepares .venv first.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# [setup] Install the project with its dev tools into .venv (./dev already did it; this re-runs it).
setup:
    python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# [stack] Start the local stack (NATS, PostgreSQL, SeaweedFS and the services) until Ctrl-C.
up *args:
    ckrv-cloud up {{args}}

# [stack] The main job end to end on a throw-away local stack.
demo:
    python -m ckrv.services.stack.demo

# [test] Lint, type-check, then the whole test suite against real servers (and a browser).
test: lint system-packages
    pytest -q

# [test] Only the tests that need no server.
test-unit:
    pytest -q -m "not integration and not e2e"

# [setup] Debian packages the tests drive: Chromium (Playwright drives /usr/bin/chromium),
# bubblewrap (the local runner's sandbox), sshd (git over ssh), strace, and gnome-keyring with
# a D-Bus daemon and monitor (the CLI's system keyring); idempotent.
system-packages:
    #!/usr/bin/env bash
    set -euo pipefail
    declare -A wanted=(
        [/usr/bin/chromium]=chromium
        [/usr/bin/bwrap]=bubblewrap
        [/usr/sbin/sshd]=openssh-server
        [/usr/bin/strace]=strace
        [/usr/bin/gnome-keyring-daemon]=gnome-keyring
        [/usr/bin/dbus-daemon]=dbus-daemon
        [/usr/bin/dbus-monitor]=dbus-bin
    )
    missing=()
    for program in "${!wanted[@]}"; do
        [ -x "$program" ] || missing+=("${wanted[$program]}")
    done
    [ ${#missing[@]} -eq 0 ] && exit 0
    if ! command -v apt-get >/dev/null; then
        echo "system-packages: install ${missing[*]} (no apt-get here to do it)" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    echo "system-packages: installing ${missing[*]} from Debian ..." >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null

# [quality] ruff (lint and format check), mypy --strict, and the generated contracts are current.
lint:
    ruff check .
    ruff format --check .
    mypy -p ckrv
    mypy tests
    python -m ckrv.schemas.export --check
    python -m ckrv.schemas.asyncapi --check
    python -m ckrv.services.gateway.openapi --check

# [quality] Rewrite the code in the house format and apply safe lint fixes.
fmt:
    ruff format .
    ruff check --fix .

# [quality] Regenerate the checked-in contracts (event JSON Schemas, AsyncAPI, OpenAPI).
schemas:
    python -m ckrv.schemas.export
    python -m ckrv.schemas.asyncapi
    python -m ckrv.services.gateway.openapi

# [perf] Run the benchmarks; each writes tests/perf/results/<name>.json and prints a table.
bench:
    python -m tests.perf

# [deploy] Build both images with buildah on local base images, check they run (root; deploy/README.md).
images *args:
    deploy/images/build-local.sh {{args}}
