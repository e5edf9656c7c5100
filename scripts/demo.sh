#!/usr/bin/env bash
# The demo: bootstraps the environment when needed, then runs a synthetic conversation through the full
# ROS 2 `demo` graph (player -> agent -> head bridge -> simulated head, all recorded) on the shipped default
# model, records an MCAP bag, prints the bag report and writes a picture of the agent's motion against ground
# truth.
# Arguments go to scripts/demo.py (see --help).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source env.sh
exec python scripts/demo.py "$@"
