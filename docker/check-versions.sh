#!/usr/bin/env bash
# Stop, in one line naming what was found, what is needed and what to install, when the Docker
# Engine or the Compose plugin is older than the stack supports. The Makefile runs it before every
# target that drives compose (`make preflight`).
#
#   Engine  >= 20.10  the oldest engine the whole suite runs on (Debian 12's docker.io, 20.10.24);
#                     compose.yaml uses no key a newer engine alone accepts (healthcheck
#                     start_interval needs 25: it is not used).
#   Compose >= 2.20.2 compose.yaml's `depends_on: {required: false}` (the PS exists only in ML mode),
#                     which 2.20.2 brought (docker/compose release notes).
set -euo pipefail

ENGINE_MIN=20.10
COMPOSE_MIN=2.20.2
ENGINE_HOW="install docker.io (Debian 12, Ubuntu 22.04 or newer) or Docker CE (docs.docker.com/engine/install)"
COMPOSE_HOW="install the Compose v2 plugin: docker-compose-plugin (Docker's repository)"
COMPOSE_HOW+=" or docker-compose from Debian 13 / Ubuntu 24.04"

fail() { echo "preflight: $*" >&2; exit 1; }

# The leading dotted number of a version string: 20.10.24+dfsg1 -> 20.10.24, v2.26.1-4 -> 2.26.1.
number() { sed -nE 's/^v?([0-9]+(\.[0-9]+)*).*/\1/p' <<< "$1"; }

# at_least FOUND MIN: FOUND >= MIN, field by field.
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

command -v docker >/dev/null || fail "no docker command found, Docker Engine >= $ENGINE_MIN needed: $ENGINE_HOW"
if ! engine_out=$(docker version --format '{{.Server.Version}}' 2>&1); then
  fail "cannot reach the Docker Engine ($(tail -n 1 <<< "$engine_out")): start dockerd, or $ENGINE_HOW"
fi
engine=$(number "$engine_out")
[ -n "$engine" ] || fail "unreadable Docker Engine version '$engine_out'; needed: Engine >= $ENGINE_MIN"
at_least "$engine" "$ENGINE_MIN" || fail "Docker Engine $engine found, >= $ENGINE_MIN needed: $ENGINE_HOW"

if ! compose_out=$(docker compose version --short 2>&1); then
  fail "no Compose v2 plugin (\`docker compose\`; v1 is not enough), >= $COMPOSE_MIN needed: $COMPOSE_HOW"
fi
compose=$(number "$compose_out")
[ -n "$compose" ] || fail "unreadable Compose version '$compose_out'; needed: Compose >= $COMPOSE_MIN"
at_least "$compose" "$COMPOSE_MIN" || fail "Docker Compose $compose found, >= $COMPOSE_MIN needed: $COMPOSE_HOW"
