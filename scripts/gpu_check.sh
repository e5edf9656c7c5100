#!/usr/bin/env bash
# One prepared command for a machine with a CUDA GPU: the CUDA-marked tests, `timar bench` of `small` and
# `large` in float32 / bfloat16 (eager, then torch.compile + CUDA graphs for the fixed-shape steady state), and
# the shipped model streaming the demo clip on the GPU; with --public-src DIR (a checkout of the public release,
# git-ignored at .public-release/ if carried along; needs timm) also `large` through the release's own sampling
# code beside the project's. Writes ONE JSON: $OUT/gpu_check.json when $OUT is set
# (the device tool), else outputs/gpu_check/gpu_check-<time>.json, or --out FILE. Every stage runs apart and
# fails soft (its error goes into the JSON). Stages and options: timar_model/deploy/gpu_check.py.
#
#   bash scripts/gpu_check.sh                      # on the GPU machine
#   bash scripts/gpu_check.sh --device cpu --out /tmp/dry.json   # dry mode here: same stages, small sizes
#
# Bootstrap, without network (a fresh GPU machine has no venv of this project): the first Python that imports
# torch (and, for --device cuda, sees a GPU) among $TIMAR_PYTHON, .venv/bin/python and python3; the project
# runs from this checkout through PYTHONPATH (nothing to install). Wheels in .whl/ (carried along; e.g.
# soundfile, onnx, onnxruntime if the machine lacks them) are installed into a temporary folder first.
# The device tool's H200 image has torch, numpy, scipy, safetensors, transformers, onnx, onnxruntime and
# pytest; carry data/demo (ignored by git) for the demo's metrics, otherwise it streams a synthetic signal.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

device=cuda
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --device) device="${args[i + 1]:-cuda}" ;;
    --device=*) device="${args[i]#--device=}" ;;
  esac
done

check='import torch, sys; sys.exit(0 if (sys.argv[1] == "cpu" or torch.cuda.is_available()) else 1)'
PY=""
for cand in "${TIMAR_PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
  [[ -n "$cand" ]] || continue
  command -v "$cand" >/dev/null 2>&1 || [[ -x "$cand" ]] || continue
  if "$cand" -c "$check" "${device%%:*}" >/dev/null 2>&1; then PY="$cand"; break; fi
done
if [[ -z "$PY" ]]; then
  echo "gpu_check: no Python with torch that sees a GPU (device $device); set TIMAR_PYTHON" >&2
  exit 2
fi

if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/timar-site.XXXXXX)
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$ROOT"/.whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: installing .whl/*.whl failed; going on without them" >&2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "[gpu_check] python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
exec "$PY" -m timar_model.deploy.gpu_check "$@"
