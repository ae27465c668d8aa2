#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (tests/e2e/test_dashboard.py), once.
# Idempotent: does nothing when /usr/bin/chromium exists. Without root (or apt-get) it only says what to do:
# the browser test then skips, and every other test runs as before. Playwright's own browser download
# (`playwright install`) is never used: the test drives this system Chromium.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: /usr/bin/chromium is missing; install Debian's chromium (apt-get install chromium) to run the dashboard's browser test" >&2
  exit 0
fi
echo "setup: installing Debian's chromium for the dashboard's browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium >/dev/null
echo "setup: chromium installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
