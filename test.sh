#!/usr/bin/env bash
# Install what is missing, then run the whole test suite (what CI runs). Extra arguments go to
# pytest (e.g. -m "not slow" for the quick subset).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
# The HTML report test renders report.html in a real headless browser (Debian's chromium); the
# labelling page's test drives it with Selenium through Debian's chromedriver (nothing is
# downloaded at run time: the test points Selenium at /usr/bin/chromedriver).
missing=""
command -v chromium >/dev/null 2>&1 || missing="chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
missing="${missing# }"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing $missing for the browser tests" >&2
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1 \
      || echo "[test] could not install $missing: the browser tests will say how" >&2
  else
    echo "[test] missing: $missing; run 'sudo apt-get install -y $missing' for the browser tests" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
