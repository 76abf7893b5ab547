#!/usr/bin/env bash
# Filter a verbose llama.cpp build log down to its progress: ninja's "[n/N] ..." lines (cut to
# the terminal's width), and pip's last word. Reads stdin, always exits 0.
width="${COLUMNS:-100}"
grep --line-buffered -E '^[[:space:]]*\[[0-9]+/[0-9]+\]|Successfully built|^ERROR' \
  | sed -u -E 's/^[[:space:]]+//' | cut -c "1-$width"
exit 0
