#!/usr/bin/env bash
# Fonts for typographic images (all ten scripts) and a Chromium for plotly PNG export.
# Best effort: without them the toolkit still works and says what is missing.
set -u
need=()
[ -d /usr/share/fonts/truetype/noto ] || need+=(fonts-noto-core)
[ -d /usr/share/fonts/opentype/noto ] || need+=(fonts-noto-cjk)
ldconfig -p 2>/dev/null | grep -q libfribidi || need+=(libfribidi0)
ldconfig -p 2>/dev/null | grep -q libraqm || need+=(libraqm0)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
      || echo "warning: could not install ${need[*]}" >&2
  else
    echo "note: install ${need[*]} (Debian) for typographic images and PNG export" >&2
  fi
fi
exit 0
