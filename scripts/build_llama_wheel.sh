#!/usr/bin/env bash
# Build llama-cpp-python from source once per (version, CPU flags) and cache the wheel.
# Flags: scripts/llama_cmake_flags.sh (explicit ISA, AMX off: native AMX builds crash).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PY:-.venv/bin/python}"
CACHE="${LITEINFER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/liteinfer/wheels}"

flags="$(bash "$(dirname "$0")/llama_cmake_flags.sh")"
key="$(printf '%s %s %s' "$VERSION" "$flags" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-12)"
dir="$CACHE/$key"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION ($flags) -> $dir (takes a few minutes)"
  tmp="$(mktemp -d "$CACHE.tmp.XXXX" 2>/dev/null || { mkdir -p "$(dirname "$CACHE")"; mktemp -d "$CACHE.tmp.XXXX"; })"
  log="$(mktemp)"
  # pip's isolated build: scikit-build-core, cmake and ninja live in a throw-away environment,
  # never in the runtime one. -v streams the build; only ninja's [n/N] lines reach the screen
  # (the whole log is shown when the build fails).
  set +e
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip wheel -v --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION" 2>&1 \
    | tee "$log" | bash "$(dirname "$0")/build_progress.sh"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "llama-cpp-python build failed (exit $rc); whole log: $log" >&2
    rm -rf "$tmp"
    exit "$rc"
  fi
  rm -f "$log"
  mkdir -p "$CACHE" && rm -rf "$dir" && mv "$tmp" "$dir"   # atomic: a half build never counts
fi
# Install the slim copy: what `import llama_cpp` loads (the wheel carries llama.cpp's CMake
# install twice and each library three times: 62 MB -> 13 MB; scripts/slim_llama_wheel.py).
slim="$dir/slim"
if ! ls "$slim"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  "$PY" "$(dirname "$0")/slim_llama_wheel.py" "$dir"/llama_cpp_python-*.whl "$slim.tmp" >/dev/null
  rm -rf "$slim" && mv "$slim.tmp" "$slim"
fi
"$PY" -m pip install --no-deps "$slim"/llama_cpp_python-*.whl
