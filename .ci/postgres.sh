#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are available and
# print the directory that holds them. Looks on PATH, in /usr/local/bin and in
# /usr/lib/postgresql/*/bin; installs the distribution's postgresql package if none has
# them. On GitHub Actions the directory is also appended to $GITHUB_PATH.
# Usage: export PATH="$(.ci/postgres.sh):$PATH"
set -euo pipefail

has_all() {
  local dir=$1
  [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]
}

find_bindir() {
  local found
  if found=$(command -v initdb 2>/dev/null); then
    found=$(dirname "$(readlink -f "$found")")
    if has_all "$found"; then echo "$found"; return 0; fi
  fi
  if has_all /usr/local/bin; then echo /usr/local/bin; return 0; fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    if has_all "$dir"; then echo "$dir"; return 0; fi
  done
  return 1
}

if ! bindir=$(find_bindir); then
  echo "PostgreSQL server binaries not found; installing postgresql" >&2
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq postgresql >&2
  if ! bindir=$(find_bindir); then
    echo "error: postgresql installed but initdb/pg_ctl/postgres still not found" >&2
    exit 1
  fi
fi

if [[ -n "${GITHUB_PATH:-}" ]]; then
  echo "$bindir" >> "$GITHUB_PATH"
fi
echo "$bindir"
