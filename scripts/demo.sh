#!/usr/bin/env bash
# The demo: bootstraps the environment when needed, then a conversation with the robot through the full ROS 2
# `talk` graph on the shipped default model: the user's side of a synthetic conversation as the microphone, a
# stand-in dialogue partner (responder) that makes the robot answer, its voice (speech_synth, espeak-ng), the
# agent moving head and jaw, head bridge -> simulated head, all recorded in an MCAP bag; then the bag report
# (with lip sync and latency), a picture, a Rerun recording and a video. `--replay`: the recorded
# conversation replayed and compared with its ground truth.
# Arguments go to scripts/demo.py (see --help).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source env.sh
exec python scripts/demo.py "$@"
