#!/usr/bin/env bash
# Make sure Debian's chromium and its WebDriver (chromium-driver) are available, for the
# browser tests of the auditor's web view (tests/test_auditweb_browser.py), and print the
# directory that holds both. Looks on PATH, then in /usr/bin; installs the distribution's
# packages if either is missing. Nothing is downloaded outside the package manager (Selenium
# is pointed at this driver, so its own driver manager never runs). On GitHub Actions the
# directory is also appended to $GITHUB_PATH.
# Usage: export PATH="$(.ci/chromium.sh):$PATH"
set -euo pipefail

find_bindir() {
  local dir
  for dir in $(dirname "$(command -v chromedriver 2>/dev/null || echo /nonexistent/x)") /usr/bin; do
    if [[ -x "$dir/chromedriver" && ( -x "$dir/chromium" || -x "$dir/chromium-browser" ) ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if ! bindir=$(find_bindir); then
  echo "chromium or chromium-driver not found; installing chromium chromium-driver" >&2
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >&2
  if ! bindir=$(find_bindir); then
    echo "error: chromium-driver installed but chromium/chromedriver still not found" >&2
    exit 1
  fi
fi

if [[ -n "${GITHUB_PATH:-}" ]]; then
  echo "$bindir" >> "$GITHUB_PATH"
fi
echo "$bindir"
