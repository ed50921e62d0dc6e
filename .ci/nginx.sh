#!/usr/bin/env bash
# Make sure nginx (the fleet-only proxy fedgate puts in front of each SuperLink) is
# available and print the directory that holds the binary. Looks on PATH, then in
# /usr/sbin and /usr/local/sbin; installs the distribution's nginx package if none has it.
# The package's own service is never started: fedgate runs nginx as a managed foreground
# process with its own config, pid, logs and temp paths. On GitHub Actions the directory
# is also appended to $GITHUB_PATH.
# Usage: export PATH="$(.ci/nginx.sh):$PATH"
set -euo pipefail

find_bindir() {
  local found dir
  if found=$(command -v nginx 2>/dev/null); then
    dirname "$(readlink -f "$found")"
    return 0
  fi
  for dir in /usr/sbin /usr/local/sbin; do
    if [[ -x "$dir/nginx" ]]; then echo "$dir"; return 0; fi
  done
  return 1
}

if ! bindir=$(find_bindir); then
  echo "nginx not found; installing nginx" >&2
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  # Keep the package from starting its system service on port 80 (fedgate starts its own
  # nginx): a temporary policy-rc.d denies service starts during the install.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends nginx >&2
  if ! bindir=$(find_bindir); then
    echo "error: nginx installation failed or the nginx binary is still not found" >&2
    exit 1
  fi
fi

if [[ -n "${GITHUB_PATH:-}" ]]; then
  echo "$bindir" >> "$GITHUB_PATH"
fi
echo "$bindir"
