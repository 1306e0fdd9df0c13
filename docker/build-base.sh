#!/usr/bin/env bash
# Build a local stand-in for the official python:3.11-slim image from Debian
# packages, for machines that reach Debian's package archive but no container
# registry:
#
#   docker/build-base.sh [TAG]        # default TAG: neostore-base:bookworm
#   docker build --build-arg BASE_IMAGE=neostore-base:bookworm -t neostore .
#
# Debian bookworm's python3 is CPython 3.11, like python:3.11-slim.  Does
# nothing when TAG already exists (set NEOSTORE_REBUILD_BASE=1 to rebuild).
# Needs root (mmdebstrap, installed with apt-get when missing) and docker.
set -euo pipefail

tag="${1:-neostore-base:bookworm}"
suite="${NEOSTORE_BASE_SUITE:-bookworm}"

if [ -z "${NEOSTORE_REBUILD_BASE:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-base: $tag exists (NEOSTORE_REBUILD_BASE=1 rebuilds it)"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "build-base: installing mmdebstrap"
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-base: mmdebstrap is missing and this is not root: apt-get install mmdebstrap" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

# The host's own CA certificates (a TLS-intercepting proxy's, a company's):
# the image trusts what the host trusts, so that pip reaches PyPI from inside
# `docker build` wherever the host does.
ca_dir="${NEOSTORE_BASE_CA_DIR:-/usr/local/share/ca-certificates}"
ca_hooks=()
if compgen -G "$ca_dir/*.crt" >/dev/null; then
    echo "build-base: adding the CA certificates of $ca_dir"
    ca_hooks=(--customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\" && cp $ca_dir/*.crt \"\$1/usr/local/share/ca-certificates/\""
              --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null')
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "build-base: mmdebstrap $suite (python3, python3-venv)"
# --variant=apt: essential packages plus apt, no recommends; the hook drops
# apt lists, docs and man pages, as the official slim images do.
mmdebstrap --quiet --variant=apt \
    --include=python3,python3-venv,ca-certificates \
    "${ca_hooks[@]}" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/var/cache/apt/*.bin' \
    "$suite" "$work/rootfs.tar"
docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "Debian $suite with python3 (docker/build-base.sh)" \
    "$work/rootfs.tar" "$tag" >/dev/null
echo "build-base: $tag built in $(( $(date +%s) - started ))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
