#!/usr/bin/env bash
# Make sure the system libraries WeasyPrint renders PDFs with (Pango, PangoFT2, HarfBuzz and a
# font) are present, for `fedgate audit report --format pdf` and its tests. Looks them up in
# the dynamic linker's cache; installs the distribution's packages if one is missing.
# Prints nothing on stdout. Usage: .ci/pango.sh
set -euo pipefail

missing() {
  local lib
  for lib in libpango-1.0.so.0 libpangoft2-1.0.so.0 libharfbuzz.so.0 libfontconfig.so.1; do
    if ! ldconfig -p | grep -q "$lib"; then return 0; fi
  done
  if ! fc-list 2>/dev/null | grep -q .; then return 0; fi
  return 1
}

if missing; then
  echo "Pango or a font not found; installing libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core" >&2
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b fontconfig \
    fonts-dejavu-core >&2
  if missing; then
    echo "error: Pango/fonts installed but still not found by the dynamic linker" >&2
    exit 1
  fi
fi
