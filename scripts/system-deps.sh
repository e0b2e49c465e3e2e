#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when they are missing:
# PostgreSQL 15 (the suite runs on it and on the embedded PostgreSQL 18) and PgBouncer
# (the rendered pgbouncer.ini is proven with the real binary).
# Needs root (or sudo); prints what to install by hand otherwise.
set -euo pipefail

missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "whodunit tests need: ${missing[*]} (apt-get install them as root)" >&2
        exit 1
    fi
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
${SUDO:-} apt-get update -qq
${SUDO:-} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts a cluster on install; the tests run their own.
${SUDO:-} pg_ctlcluster 15 main stop 2>/dev/null || true
${SUDO:-} service pgbouncer stop 2>/dev/null || true
