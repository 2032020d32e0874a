#!/usr/bin/env bash
# Reproduce the bundled model models/rsd-tiny stage by stage on a CPU (`make tiny-model`).
#
#   scripts/tiny_model.sh              # continue from models/rsd-tiny-stages/ (finished stages are reused)
#   FROM_SCRATCH=1 scripts/tiny_model.sh   # retrain every stage (about 66 minutes on two cores)
#
# Stages: data (scikit-image photos -> runs/tiny_data) -> autoencoder -> teacher -> distill -> eval.
# Each stage is resumable: cut the script off at any moment and run it again; a stage with checkpoints
# under runs/tiny_<stage>/checkpoints continues from the newest one (`rsd train ... --resume`). A finished
# stage's product is copied to models/rsd-tiny-stages/ so later runs start from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAGES=models/rsd-tiny-stages
export OMP_WAIT_POLICY=PASSIVE   # idle OpenMP threads must not spin on shared cores

train() {  # train NAME STAGE PRODUCT_SUBDIR: run or resume runs/tiny_NAME, then keep the product
  local name=$1 stage=$2 product=$3 run=runs/tiny_$1
  if [[ -z "${FROM_SCRATCH:-}" && -d $STAGES/$name && ! -e $run/$product ]]; then
    echo "== $name: reusing $STAGES/$name"
    mkdir -p "$run" && cp -r "$STAGES/$name" "$run/$product"
  fi
  if [[ -e $run/$product ]]; then
    echo "== $name: done ($run/$product)"
    return
  fi
  local resume=()
  if compgen -G "$run/checkpoints/step_*.pt" > /dev/null; then resume=(--resume "$run"); fi
  echo "== $name: training ${resume[*]:-from scratch}"
  local start=$SECONDS
  "$PY" -m rsd_cli.main train "$stage" --config "configs/tiny_$name.toml" "${resume[@]}"
  echo "== $name: $((SECONDS - start)) s"
  rm -rf "${STAGES:?}/$name" && mkdir -p "$STAGES" && cp -r "$run/$product" "$STAGES/$name"
}

if [[ -n "${FROM_SCRATCH:-}" ]]; then
  rm -rf runs/tiny_autoencoder runs/tiny_teacher runs/tiny_distill
fi
"$PY" scripts/tiny_data.py runs/tiny_data
train autoencoder autoencoder autoencoder
train teacher teacher artifact
train distill distill artifact
rm -rf "$STAGES/distill"  # the student is the bundled model itself
mkdir -p models/rsd-tiny
cp runs/tiny_distill/artifact/spec.json runs/tiny_distill/artifact/weights.safetensors models/rsd-tiny/
"$PY" scripts/tiny_eval.py models/rsd-tiny runs/tiny_data
