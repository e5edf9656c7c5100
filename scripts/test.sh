#!/usr/bin/env bash
# The test command: bootstraps the environment when needed, then lint + the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source env.sh
echo "[test] ruff check"
ruff check .
echo "[test] pytest"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
python -m pytest "$@"
