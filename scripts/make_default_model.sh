#!/usr/bin/env bash
# Reproduces the shipped default model models/timar-small-synth and its model-card numbers, from nothing:
# synthetic corpus -> TIMAR-small training -> MLP-head ablation training -> streaming evaluation of both and of
# the trivial baselines on the synthetic test and ood splits (n = 0 and n = 7) -> result tables.
# About 2 hours on 2 CPU cores. Each step is skipped when its output exists (delete it to redo it).
#
#   bash scripts/make_default_model.sh            # everything
#   SKIP_MLP=1 bash scripts/make_default_model.sh # without the MLP-head ablation
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source env.sh

DATA=data/synth
EVAL=outputs/eval
MODEL=models/timar-small-synth

[[ -f $DATA/manifest.json ]] || timar synth "$DATA" --hours 2 --seed 0 --workers 2

train() { # recipe out
  if [[ ! -f $2/final/model.safetensors ]]; then
    if [[ -f $2/checkpoints/last.pt ]]; then
      timar train --config "$1" --out "$2" --resume
    else
      timar train --config "$1" --out "$2"
    fi
  fi
}
train config/train/small-synthetic.yaml runs/small-synthetic
[[ -n "${SKIP_MLP:-}" ]] || train config/train/small-synthetic-mlp.yaml runs/small-synthetic-mlp

for split in test ood; do
  ev() { # system args...
    local system=$1; shift
    [[ -f $EVAL/$system/$split/metrics.json ]] || \
      timar eval "$@" --data "$DATA/$split" --context 0,7 --out "$EVAL/$system/$split"
  }
  ev timar-small --checkpoint runs/small-synthetic/final
  [[ -n "${SKIP_MLP:-}" ]] || ev mlp-head --checkpoint runs/small-synthetic-mlp/final
  ev zero --baseline zero
  ev mean --baseline mean --train-data "$DATA/train"
  ev copy-partner --baseline copy-partner
done

mkdir -p "$MODEL"
cp runs/small-synthetic/final/config.json runs/small-synthetic/final/model.safetensors "$MODEL"/
cp config/train/small-synthetic.yaml "$MODEL"/recipe.yaml
python scripts/results_table.py "$EVAL" | tee "$MODEL"/RESULTS.md
echo "model written to $MODEL (the model card README.md there quotes RESULTS.md)"
