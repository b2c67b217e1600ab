#!/usr/bin/env bash
# Builds, with no image registry, the two Debian 12 base images the Dockerfile needs, as stand-ins
# for the public defaults it names (python:3.11-slim-bookworm, gcr.io/distroless/python3-debian12):
#   llm-proxy/python-builder:bookworm  debootstrap'd minimal Debian with python3.11 + venv (a shell
#                                      and apt: only the build stage runs on it)
#   llm-proxy/python-runtime:bookworm  distroless-style: the Debian packages of python3.11 and the
#                                      C/C++ runtime, unpacked FROM scratch like distroless does
#                                      (no maintainer scripts, no shell, no apt, no dpkg), with the
#                                      user nonroot (65532) and Python at /usr/bin/python3.11
#   scripts/build_base_images.sh [--force]
# An image already present is kept (the build takes minutes; --force rebuilds). Needs root,
# debootstrap and apt access to a Debian bookworm mirror ($DEBIAN_MIRROR).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILDER_TAG=${LOCAL_BUILDER_IMAGE:-llm-proxy/python-builder:bookworm}
RUNTIME_TAG=${LOCAL_RUNTIME_IMAGE:-llm-proxy/python-runtime:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
force=false
[[ ${1:-} == --force ]] && force=true

# What gcr.io/distroless/python3-debian12 holds (its base, cc and python3 layers): python3.11 with
# its standard library and their shared libraries, libstdc++/libgomp for native wheels, CA
# certificates, time zones, /etc/services.
RUNTIME_PACKAGES=(
  base-files netbase tzdata ca-certificates media-types readline-common
  libc6 gcc-12-base libgcc-s1 libgomp1 libstdc++6 libssl3 zlib1g
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libbz2-1.0 libcrypt1 libdb5.3 libexpat1 libffi8 libgdbm6 liblzma5 libncursesw6
  libnsl2 libreadline8 libsqlite3-0 libtinfo6 libtirpc-common libtirpc3 libuuid1
  libgssapi-krb5-2 libk5crypto3 libkrb5-3 libkrb5support0 libkeyutils1 libcom-err2
)

note() { echo "build_base_images: $*" >&2; }
present() { docker image inspect "$1" >/dev/null 2>&1; }
need() {
  command -v "$1" >/dev/null && return 0
  note "installing Debian's $2 package"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Writes the nonroot account of distroless (uid and gid 65532, home /home/nonroot).
add_accounts() {
  local root=$1
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  mkdir -p "$root/home/nonroot" "$root/root"
  chown 65532:65532 "$root/home/nonroot"
  chmod 700 "$root/root"
}

import_rootfs() {  # rootfs tag description
  tar -C "$1" --numeric-owner -c . |
    docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --message "$3" - "$2" >/dev/null
}

build_builder() {
  need debootstrap debootstrap
  local root=$work/builder
  note "debootstrap of bookworm with python3.11 for $BUILDER_TAG (a few minutes)"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # Installed afterwards: with debootstrap --include, python3.11-venv fails to configure.
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
    python3.11-venv ca-certificates >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
  # The build stage downloads from PyPI: it trusts the CAs this host added to Debian's store
  # (a TLS-intercepting egress proxy, say), as the host does. The runtime image does not.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  ln -sf python3.11 "$root/usr/bin/python3"
  import_rootfs "$root" "$BUILDER_TAG" "Debian 12 minbase + python3.11-venv (debootstrap)"
  docker run --rm "$BUILDER_TAG" python3.11 -m venv /tmp/probe
}

build_runtime() {
  local root=$work/runtime debs=$work/debs
  mkdir -p "$root" "$debs"
  note "unpacking ${#RUNTIME_PACKAGES[@]} Debian packages for $RUNTIME_TAG"
  (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${RUNTIME_PACKAGES[@]}")
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # Unpacked debs keep their docs and lintian notes; a runtime has no use for them.
  rm -rf "$root"/usr/share/{doc,man,info,lintian,locale}
  # ca-certificates' postinst would concatenate the bundle; no scripts run here, so do it.
  mkdir -p "$root/etc/ssl/certs"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  ln -sf python3.11 "$root/usr/bin/python3"
  mkdir -m 1777 -p "$root/tmp" "$root/var/tmp"
  add_accounts "$root"
  # Compiled standard library: with a read-only root filesystem Python could not write it later.
  # The stand-alone interpreter runs in the staged tree, which also proves its libraries resolve.
  chroot "$root" /usr/bin/python3.11 -I -m compileall -q /usr/lib/python3.11 >/dev/null
  chroot "$root" /usr/bin/python3.11 -I -c \
    'import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, hashlib, decimal, json, asyncio'
  for shell in sh bash dash apt dpkg; do
    [[ ! -e $root/bin/$shell && ! -e $root/usr/bin/$shell ]] || { note "$shell in runtime"; exit 1; }
  done
  import_rootfs "$root" "$RUNTIME_TAG" "distroless-style python3.11 from Debian 12 packages"
}

if $force || ! present "$BUILDER_TAG"; then build_builder; else note "$BUILDER_TAG present"; fi
if $force || ! present "$RUNTIME_TAG"; then build_runtime; else note "$RUNTIME_TAG present"; fi
for tag in "$BUILDER_TAG" "$RUNTIME_TAG"; do
  note "$tag: $(($(docker image inspect -f '{{.Size}}' "$tag") / 1024 / 1024)) MiB"
done
