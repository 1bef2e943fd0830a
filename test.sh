#!/usr/bin/env bash
# Install what is missing, then run the whole test suite (what CI runs). Extra arguments go to
# pytest (e.g. -m "not slow" for the quick subset).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
# The HTML report test renders report.html in a real headless browser (Debian's chromium).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium for the report test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "[test] could not install chromium: the report test will say how" >&2
  else
    echo "[test] chromium is missing: run 'sudo apt-get install -y chromium' for the report test" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
