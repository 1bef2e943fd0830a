#!/usr/bin/env bash
# Install what is missing, then run the whole test suite (what CI runs). Extra arguments go to
# pytest (e.g. -m "not slow" for the quick subset).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
