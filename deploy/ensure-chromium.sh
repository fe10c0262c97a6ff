#!/usr/bin/env bash
# The browser the web page's test drives (tests/web_page.rs): Debian's headless Chromium and
# its WebDriver server. Installs them when missing (as root, or with sudo when present).
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "ensure-chromium: chromium and chromium-driver are missing and this user cannot install them;" >&2
    echo "  run as root: DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver" >&2
    exit 1
fi
echo "ensure-chromium: installing chromium and chromium-driver" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
