#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
set -euo pipefail
chromium=${SENSORHUB_CHROMIUM:-/usr/bin/chromium}
[[ -x $chromium ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "browser: installing Debian's chromium with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
else
  echo "browser: $chromium not found; run: sudo apt-get install -y chromium" >&2
  exit 1
fi
