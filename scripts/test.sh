#!/usr/bin/env bash
# Install what the tests need and run them: `bash scripts/test.sh [pytest args]`.
# The browser test drives Debian's chromium, and the world gate's tests draw emoji with Debian's
# Noto Color Emoji font: both are installed here when we are root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if { ! command -v chromium >/dev/null 2>&1 || [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; } &&
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
python3 -m pip install -q -r requirements-dev.txt
python3 -m pytest "$@"
