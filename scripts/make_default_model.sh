#!/usr/bin/env bash
# Reproduces the shipped default model models/timar-small-synth and its model-card numbers, from nothing:
# synthetic corpus -> stage 1: TIMAR-small with the MLP head (also the MLP-head ablation) -> stage 2: the
# diffusion head on stage 1's frozen backbone (the shipped model) -> sweep of the sampling temperature and
# noise correlation on a validation split (new clips, seed 1; the recipe says how its values were picked) -> streaming
# evaluation of both models and of the trivial baselines on the synthetic test and ood splits (n = 0 and
# n = 7) -> result tables -> the model card's fixed-subset check. About 1.8 hours on 2 CPU cores. Each step is skipped when its output exists
# (delete it to redo it).
#
#   bash scripts/make_default_model.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source env.sh

DATA=data/synth
EVAL=outputs/eval
MODEL=models/timar-small-synth

VAL=data/synth-val
SWEEP=outputs/temperature-sweep

[[ -f $DATA/manifest.json ]] || timar synth "$DATA" --hours 2 --seed 0 --workers 2
[[ -f $VAL/manifest.json ]] || timar synth "$VAL" --seed 1 --splits test --clips 36 --workers 2

train() { # recipe out
  if [[ ! -f $2/final/model.safetensors ]]; then
    if [[ -f $2/checkpoints/last.pt ]]; then
      timar train --config "$1" --out "$2" --resume
    else
      timar train --config "$1" --out "$2"
    fi
  fi
}
train config/train/small-synthetic-mlp.yaml runs/small-synthetic-mlp  # stage 1 (and the MLP-head ablation)
train config/train/small-synthetic.yaml runs/small-synthetic          # stage 2: init_from stage 1

# the sampling temperature and noise correlation, on the validation split (the MLP-head ablation for reference)
[[ -f $SWEEP/mlp-head/metrics.json ]] || \
  timar eval --checkpoint runs/small-synthetic-mlp/final --data "$VAL/test" --history 7 --out "$SWEEP/mlp-head"
timar sweep runs/small-synthetic/final --data "$VAL/test" \
  --temperatures 0.3,0.4,0.5,0.7,1 --noise-correlations 0,0.9,0.97 --reference "$SWEEP/mlp-head" --out "$SWEEP"

for split in test ood; do
  ev() { # system args...
    local system=$1; shift
    [[ -f $EVAL/$system/$split/metrics.json ]] || \
      timar eval "$@" --data "$DATA/$split" --history 0,7 --out "$EVAL/$system/$split"
  }
  ev timar-small --checkpoint runs/small-synthetic/final
  ev timar-small-paper-sampling --checkpoint runs/small-synthetic/final --temperature 1 --noise-correlation 0 --head-smoothing 0
  ev mlp-head --checkpoint runs/small-synthetic-mlp/final
  ev zero --baseline zero
  ev mean --baseline mean --train-data "$DATA/train"
  ev copy-partner --baseline copy-partner
done

mkdir -p "$MODEL"
cp runs/small-synthetic/final/config.json runs/small-synthetic/final/model.safetensors "$MODEL"/
cp config/train/small-synthetic.yaml "$MODEL"/recipe.yaml
cp config/train/small-synthetic-mlp.yaml "$MODEL"/recipe-stage1.yaml
cp "$SWEEP"/sweep.md "$MODEL"/TEMPERATURE.md
cp "$SWEEP"/sweep.png "$MODEL"/temperature-sweep.png
timar results-table "$EVAL" --systems timar-small,timar-small-paper-sampling,mlp-head,zero,mean,copy-partner \
  --variants timar-small-paper-sampling | tee "$MODEL"/RESULTS.md
timar card-check "$MODEL" --write
echo "model written to $MODEL (the model card README.md there quotes RESULTS.md)"
