#!/usr/bin/env bash
# Debian's Chromium and its driver, for the test that opens the ask page in a real headless browser
# (tests/test_ask_page.py; selenium drives the installed chromedriver, nothing is downloaded at run time). Needs root.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "envs/setup-browser.sh: installing chromium needs root; the browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
echo "set up: $(chromium --version 2>/dev/null | head -1)"
