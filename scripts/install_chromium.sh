#!/usr/bin/env bash
# The console's browser tests (tests/console/test_console_browser.py) drive the operating
# system's Chromium through Playwright; Playwright's own browser downloads are never used (the
# CI machines and the appliance have no route to them). Installs Debian's `chromium` when
# /usr/bin/chromium is missing; exits non-zero, saying why, when it cannot, so the test run
# stops here instead of skipping the browser tests.
set -euo pipefail

CHROMIUM=${SEALAGG_CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: $CHROMIUM is missing and this machine has no apt-get;" \
        "install Chromium from the operating system's packages (the console's browser tests need it)" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_chromium.sh: $CHROMIUM is missing; installing it needs root (run as root," \
            "or give this user password-less sudo), or run: sudo apt-get install chromium" >&2
        exit 1
    fi
fi

echo "install_chromium.sh: installing Debian's chromium for the console's browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get update -q || \
   ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium; then
    echo "install_chromium.sh: apt-get could not install chromium (no network or no such" \
        "package?); the console's browser tests cannot run without it" >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium.sh: chromium was installed but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_chromium.sh: $("$CHROMIUM" --version 2>/dev/null || echo chromium) ready" >&2
