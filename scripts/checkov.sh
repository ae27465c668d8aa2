#!/usr/bin/env bash
# Runs checkov from its own virtual environment (.tools/checkov, made on first use): checkov pins many
# packages of its own, which would fight the project's, so it never enters .venv.
# Usage: scripts/checkov.sh [checkov arguments...]; prints the checkov executable's path with --path-only.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
VENV=.tools/checkov
PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/checkov" ]] || ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
    echo "scripts/checkov.sh: installing checkov $CHECKOV_VERSION into $VENV (once)" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
fi
if [[ "${1:-}" == "--path-only" ]]; then
    echo "$PWD/$VENV/bin/checkov"
    exit 0
fi
exec "$VENV/bin/checkov" "$@"
