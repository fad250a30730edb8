#!/usr/bin/env bash
# The concurrency benchmarks (benchmarks/online.py (d), make bench-peers) drive the servers with wrk, outside
# the server processes. Install Debian's wrk when it is missing and we may (root with apt-get); otherwise say how.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q wrk
  exit 0
fi
echo "wrk is needed for the concurrency benchmarks: sudo apt-get install -y wrk" >&2
exit 1
