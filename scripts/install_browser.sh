#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser test (tests/test_browser.py).
#
# Playwright drives this system browser through `executable_path`; we never run
# `playwright install`, which downloads its own browser build from a CDN that the
# course machines cannot reach. Idempotent: does nothing when Chromium is there.
# Runs as root in CI and through sudo for a normal user.
set -euo pipefail

CHROMIUM="${FTLAB_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: $CHROMIUM is missing and this system has no apt-get." >&2
    echo "  Fix: install Chromium with your package manager and set FTLAB_CHROMIUM=/path/to/chromium," >&2
    echo "  or skip the browser test with: pytest -m 'not browser'" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_browser.sh: need root (or sudo) to apt-get install chromium." >&2
    exit 1
fi

echo "install_browser.sh: installing Debian's chromium (once, about a minute) ..."
# apt's chatter goes to a log that is shown only when something fails.
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
# --no-install-recommends keeps it to the browser, its libraries and one font family
# (no desktop packages). DEBIAN_FRONTEND must survive sudo, hence `env`.
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium fonts-liberation; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "install_browser.sh: apt-get failed (output above)." >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser.sh: apt-get finished but $CHROMIUM is still missing." >&2
    exit 1
fi
echo "install_browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo chromium) ready."
