#!/usr/bin/env bash
# The main job: install what is missing, then sweep the SVM grid on the shared mini set with the
# default backbone. Extra arguments go to `animefaces sweep` (e.g. --config configs/paper.toml).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/animefaces sweep --data "${ANIMEFACES_DATA:-../shared/data/animefaces-mini}" "$@"
