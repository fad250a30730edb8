#!/usr/bin/env bash
# Everything outside Python that the test suite needs, installed and started idempotently (`make test` runs it):
#   Debian packages  postgresql, redis-server, prometheus (promtool + the server), prometheus-pushgateway,
#                    chromium, chromium-driver, nats-server, wrk, git, python3-venv, and what
#                    scripts/setup-spark.sh names for the Spark engine (a Java runtime, the JDBC and jarjar jars)
#   services         PostgreSQL on 127.0.0.1:5432 with trust auth for the postgres role over TCP (skipped when
#                    FEATURELAKE_TEST_PG_URL points the tests at another server). Redis, Prometheus, the
#                    Pushgateway and NATS are started by the tests themselves, on free loopback ports.
# Only what is missing is installed (apt-get update runs only then). As root it runs apt-get; otherwise it prints
# the exact command and exits 1. Tests whose program is missing fail naming it; deselect them with pytest -m
# (markers in pyproject.toml).
# Usage: scripts/setup-system.sh [--check]   (--check: only report what is missing; exit 1 if anything is)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
check_only=0
[ "${1:-}" = --check ] && check_only=1

say() { echo "setup-system: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" = 0 ]; }
pg_tcp_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
pg_login() { PGCONNECT_TIMEOUT=5 psql -w -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }

# --- Debian packages -------------------------------------------------------------------------------------------
missing=()
need() {  # need PACKAGE COMMAND...: the package unless every command is on PATH
  local pkg=$1 cmd
  shift
  for cmd in "$@"; do
    if ! have "$cmd"; then
      missing+=("$pkg")
      return
    fi
  done
}
need git git
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ -z "${FEATURELAKE_TEST_PG_URL:-}" ] && ! pg_tcp_up; then
  need postgresql pg_ctlcluster psql
fi
need redis-server redis-server
need prometheus promtool prometheus
need prometheus-pushgateway prometheus-pushgateway
have chromium || have chromium-browser || have google-chrome || missing+=(chromium)
need chromium-driver chromedriver
need nats-server nats-server
need wrk wrk
read -ra spark_pkgs <<<"$(bash scripts/setup-spark.sh packages)"
missing+=("${spark_pkgs[@]}")

if [ ${#missing[@]} -gt 0 ]; then
  if [ $check_only = 1 ] || ! is_root || ! have apt-get; then
    say "missing system packages: ${missing[*]}"
    say "install them (as root) with:"
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    say "then run make test again; or leave out the tests that need them (see the markers in pyproject.toml)"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -q "${missing[@]}"
fi
[ $check_only = 1 ] && { say "all system packages present"; exit 0; }

# --- PostgreSQL on 127.0.0.1:5432, trust for TCP --------------------------------------------------------------
if [ -z "${FEATURELAKE_TEST_PG_URL:-}" ]; then
  if ! pg_tcp_up; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if ! is_root; then
      say "PostgreSQL is not running on 127.0.0.1:5432; start it with: sudo pg_ctlcluster ${ver:-<version>} main start"
      say "(or point the tests at another server: FEATURELAKE_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/DB)"
      exit 1
    fi
    if [ -z "$ver" ]; then  # the package came without a cluster (create_main_cluster = false)
      ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      say "creating PostgreSQL cluster $ver/main"
      pg_createcluster "$ver" main
    fi
    say "starting PostgreSQL $ver/main"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster "$ver" main start
    for _ in $(seq 1 30); do pg_tcp_up && break; sleep 1; done
    pg_tcp_up || { say "PostgreSQL $ver/main did not come up on 127.0.0.1:5432"; exit 1; }
  fi
  # The tests log in as postgres over TCP without a password (trust), as in a throwaway CI database.
  if have psql && ! pg_login; then
    if ! is_root; then
      say "cannot log in as postgres on 127.0.0.1:5432 without a password; add this first line to pg_hba.conf"
      say "and reload: host all all 127.0.0.1/32 trust   (or set FEATURELAKE_TEST_PG_URL)"
      exit 1
    fi
    hba=$(su postgres -c "psql -tAc 'show hba_file'")
    say "trusting 127.0.0.1/32 in $hba"
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
    for _ in $(seq 1 10); do pg_login && break; sleep 0.5; done
    pg_login || { say "still cannot log in as postgres on 127.0.0.1:5432"; exit 1; }
  fi
fi
say "system packages and services ready"
