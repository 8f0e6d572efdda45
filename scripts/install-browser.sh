#!/usr/bin/env bash
# Install what the browser test (tests/test_demo_browser.py) needs: Debian's `chromium` through apt.
# Idempotent and quiet when it is already there. Never fails the caller: without root (or password-less sudo)
# or without apt it says why and exits 0, and the browser test then skips with that reason.
# The Playwright driver comes from PyPI with the dev extra; no browser is ever downloaded by Playwright.
set -uo pipefail
CHROMIUM=${FASTVC_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium yourself and set FASTVC_CHROMIUM" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install-browser: not root and no password-less sudo; run: sudo apt-get install chromium" >&2
  exit 0
fi
echo "install-browser: installing Debian's chromium (once; takes a minute or two)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation; } \
    >/tmp/fastvc-install-browser.log 2>&1; then
  echo "install-browser: apt-get could not install chromium (see /tmp/fastvc-install-browser.log)" >&2
fi
exit 0
