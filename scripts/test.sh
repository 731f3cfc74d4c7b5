#!/usr/bin/env bash
# Set up a fresh machine (a virtual environment with the package and its test, data and docs
# extras), build the documentation strictly (a warning or a broken cross-reference fails), then
# run the test suite. Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,data,docs]'
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$SITE"

.venv/bin/python -m pytest -n 2 --dist loadfile -q "$@"
