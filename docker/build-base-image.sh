#!/usr/bin/env bash
# Print the name of a usable Debian 13 base image, building one locally if none can be had.
#
#   docker/build-base-image.sh [IMAGE]     (IMAGE defaults to debian:trixie-slim)
#
# 1. IMAGE already present: print it.  2. `docker pull IMAGE` works: print it.
# 3. Otherwise build dist-llm-train-base:trixie with debootstrap (minbase, about 20 s) from the
#    Debian mirror this host's apt already uses, `docker import` it, and print that name.
# Progress goes to stderr; stdout carries only the image name, for the Makefile.
set -euo pipefail

want=${1:-debian:trixie-slim}
local_name=dist-llm-train-base:trixie

if docker image inspect "$want" >/dev/null 2>&1; then echo "$want"; exit 0; fi
if docker image inspect "$local_name" >/dev/null 2>&1; then echo "$local_name"; exit 0; fi
if timeout 60 docker pull -q "$want" >/dev/null 2>&1; then echo "$want"; exit 0; fi

echo "base-image: $want is absent and cannot be pulled; building $local_name with debootstrap" >&2
if ! command -v debootstrap >/dev/null; then
  echo "base-image: debootstrap is missing (apt-get install debootstrap), or make $want available" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "base-image: debootstrap must run as root (sudo make base-image)" >&2
  exit 1
fi

# The first Debian archive URI of this host's apt sources (deb822 or one-line format);
# empty lets debootstrap use its own default.
mirror=$(
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -E '/debian/?$' | head -n 1 || true
)
root=$(mktemp -d /tmp/dlt-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase trixie "$root" ${mirror:+"$mirror"} >&2
# Keep the mirror debootstrap used, so apt-get inside the build reaches the same archive.
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$local_name" >&2
echo "$local_name"
