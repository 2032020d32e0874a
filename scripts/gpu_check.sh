#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): the official config with random weights on one CUDA device, then the
# embedded service at saturation; one JSON (--out, default bench/results/gpu_check.json, and $OUT/ when
# set) and one printed table. Runs from a clean copy of the repository on a machine with torch (CUDA)
# preinstalled and no network: what else it needs travels beside it as wheels in .whl/.
#
#   scripts/gpu_check.sh --download-wheels   # here (network): the wheels below + sample photos into .whl/
#   scripts/gpu_check.sh [--budget-s 300] [--out PATH]   # on the GPU machine
#   scripts/gpu_check.sh --cpu-dry-run       # the same code on the CPU, tiny config, seconds (a test runs it)
#
# The project is imported through PYTHONPATH (no `pip install -e`); the wheels are installed with
# `pip install --no-index --find-links .whl --target DIR` (GPU_CHECK_SITE, default under $TMPDIR), or
# unzipped there where the interpreter has no pip. Where the serve wheels are missing the model part
# still runs and the table says why the service row is not there.
# PYTHON: the interpreter (default: python3, or .venv/bin/python where it exists).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/rsd-gpu-check-site}"

# rsd itself needs pydantic (its configs and spec); the GPU machine has torch, numpy, pillow, safetensors.
# Pinned to the versions the test environment runs.
MODEL_WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0
  typing-inspection==0.4.5)
# The embedded service (service.api, service.settings, uvicorn) and the benchmark's client (httpx).
SERVICE_WHEELS=(fastapi==0.165.0 annotated-doc==0.0.7 opentelemetry-api==1.45.3 starlette==1.10.0
  pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34 prometheus-client==0.26.0
  uvicorn==0.55.0 click==8.5.1 h11==0.16.0 httpx==0.29.0 httpcore==1.0.9 anyio==4.16.0 idna==3.21
  certifi==2026.10.19.post1)
MODEL_IMPORTS="import pydantic"
SERVICE_IMPORTS="import fastapi, starlette, pydantic_settings, multipart, prometheus_client, uvicorn, httpx"
#: the sample photos bench/device_sim.py uploads (scikit-image ships them; it is not on the GPU machine)
PHOTOS=(astronaut.png chelsea.png coffee.png hubble_deep_field.jpg motorcycle_left.png retina.jpg rocket.jpg ihc.png)

download_wheels() {
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --python-version 3.12 --only-binary=:all: --platform manylinux_2_17_x86_64 \
    --implementation cp -d "$WHEELS" "${MODEL_WHEELS[@]}" "${SERVICE_WHEELS[@]}"
  local folder
  folder="$("$PYTHON" -c 'import pathlib, skimage.data; print(pathlib.Path(skimage.data.__file__).parent)')"
  mkdir -p "$WHEELS/photos"
  for photo in "${PHOTOS[@]}"; do cp "$folder/$photo" "$WHEELS/photos/"; done
  echo "gpu_check: $(ls "$WHEELS"/*.whl | wc -l) wheels and ${#PHOTOS[@]} photos in $WHEELS"
}

# install_into DIR REQUIREMENT...: from the wheels only; unzipped where there is no pip (a wheel is a zip
# whose top level goes into site-packages as it is)
install_into() {
  local target="$1"; shift
  rm -rf "$target" && mkdir -p "$target"
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --target "$target" "$@"
  else
    for wheel in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$target"; done
  fi
}

imports() { PYTHONPATH="$1" "$PYTHON" -c "$2" 2>/dev/null; }

if [[ "${1:-}" == "--download-wheels" ]]; then
  download_wheels
  exit 0
fi

EXTRA=""
NOTE=""
if imports "" "$MODEL_IMPORTS; $SERVICE_IMPORTS"; then
  NOTE="the serve packages are installed"
elif [[ -d "$WHEELS" ]] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "gpu_check: installing the wheels of $WHEELS into $SITE"
  if install_into "$SITE" "${MODEL_WHEELS[@]}" "${SERVICE_WHEELS[@]}" && imports "$SITE" "$SERVICE_IMPORTS"; then
    EXTRA="$SITE"
    NOTE="serve packages from $WHEELS"
  else
    install_into "$SITE" "${MODEL_WHEELS[@]}" || true
    EXTRA="$SITE"
    NOTE="the serve wheels in $WHEELS did not install (rerun scripts/gpu_check.sh --download-wheels)"
  fi
else
  NOTE="no wheels in $WHEELS: run scripts/gpu_check.sh --download-wheels where there is network, copy .whl/ beside"
fi
PATHS="$REPO${EXTRA:+:$EXTRA}${PYTHONPATH:+:$PYTHONPATH}"
if ! imports "$PATHS" "$MODEL_IMPORTS"; then
  echo "gpu_check: pydantic (rsd's own dependency) cannot be imported: $NOTE" >&2
  exit 2
fi
export GPU_CHECK_INSTALL_NOTE="$NOTE" GPU_CHECK_PHOTOS="${GPU_CHECK_PHOTOS:-$WHEELS/photos}"
PYTHONPATH="$PATHS" exec "$PYTHON" "$REPO/bench/gpu_check.py" "$@"
