#!/usr/bin/env bash
# Create the separate virtualenv that holds Feast (never installed into featurelake's own .venv) plus the
# packages the peer benchmark needs on its side: the Feast half runs in this venv, the featurelake half in
# featurelake's .venv. Idempotent: a stamp file records the pinned versions that were installed.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
PEERS_VENV="${PEERS_VENV:-benchmarks/.peers-venv}"
FEAST_VERSION="${FEAST_VERSION:-0.67.0}"
SPEC="feast[redis]==${FEAST_VERSION} matplotlib"
STAMP="$PEERS_VENV/.installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" ]]; then
  exit 0
fi
"$PYTHON" -m venv "$PEERS_VENV"
"$PEERS_VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$PEERS_VENV/bin/pip" install -q $SPEC
echo "$SPEC" > "$STAMP"
"$PEERS_VENV/bin/python" -c 'import feast, matplotlib; print("peers venv ready: feast", feast.__version__)'
