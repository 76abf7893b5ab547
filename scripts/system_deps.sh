#!/usr/bin/env bash
# Debian packages the tests use: chromium (web page test), fortunes (English text for
# perplexity and calibration), dataset-fashion-mnist (inspection model data).
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
[ -d /usr/share/games/fortunes ] || need+=(fortunes)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v espeak-ng >/dev/null || need+=(espeak-ng)  # text-to-speech (serve --voice, the speech tests)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "need root to install: ${need[*]}" >&2; exit 1; fi
  echo "installing system packages: ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
