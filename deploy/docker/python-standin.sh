#!/usr/bin/env bash
# A local stand-in for the python:3.11-slim-bookworm base image, for machines that reach Debian's and
# PyPI's package mirrors but no container registry: Debian bookworm (minbase) + its Python 3.11, pip and
# venv, `python`/`pip` on PATH like the official image, no EXTERNALLY-MANAGED marker (the official image
# has none either), and this machine's CA bundle (a TLS-inspecting egress proxy needs it). Imported into
# podman as IMAGE (default localhost/marc-python:3.11-slim-bookworm) and labelled with a key over this
# recipe, the mirror and the CA bundle: an image with the same key is reused as is, so it is built once
# per machine (podman's image store lives outside any clone). Needs root, debootstrap and podman.
#
#   deploy/docker/python-standin.sh [IMAGE]
#   podman build --build-arg PYTHON_IMAGE=localhost/marc-python:3.11-slim-bookworm ...
set -euo pipefail

IMAGE=${1:-localhost/marc-python:3.11-slim-bookworm}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# The Debian mirror this machine's apt uses (whatever the sources' format), else deb.debian.org.
mirror=$(apt-cache policy | grep -m1 -oP '^\s*\d+\s+\K\S+(?= bookworm/main )' || true)
mirror=${mirror:-http://deb.debian.org/debian}

key=$(cat "$0" "$CA_BUNDLE" <(echo "$mirror") | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "marc.recipe"}}' "$IMAGE" 2>/dev/null)" = "$key" ]; then
    echo "==> stand-in base $IMAGE is up to date (recipe $key)"
    exit 0
fi

echo "==> building the stand-in base $IMAGE from $mirror (debootstrap, a few minutes, once per machine)"
rootfs=$(mktemp -d /var/tmp/marc-python-standin.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
cp "$CA_BUNDLE" "$rootfs$CA_BUNDLE"
# pip in a venv uses its own certifi bundle unless told otherwise.
printf '[global]\ncert = %s\n' "$CA_BUNDLE" > "$rootfs/etc/pip.conf"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL marc.recipe=$key" \
    - "$IMAGE"
echo "==> stand-in base $IMAGE ready (recipe $key)"
