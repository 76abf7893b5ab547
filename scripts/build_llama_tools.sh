#!/usr/bin/env bash
# Build llama.cpp's command-line tools (llama-imatrix, llama-quantize, llama-perplexity,
# llama-server) from the llama.cpp sources vendored in the llama-cpp-python sdist, so the
# tools match the library version we link against. Cached once per (version, CPU flags) under
#   ${XDG_CACHE_HOME:-~/.cache}/liteinfer/tools/<key>/bin
# Idempotent (a finished build is reused) and atomic (built in a temp dir, renamed into place).
# Same safe flags as build_llama_wheel.sh: GGML_NATIVE on AMX CPUs segfaults on batched decode.
# Prints the bin folder on its last line.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PY:-.venv/bin/python}"
CACHE="${LITEINFER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/liteinfer/tools}"
TOOLS=(llama-imatrix llama-quantize llama-perplexity llama-server)

flags="$(bash "$(dirname "$0")/llama_cmake_flags.sh")"
key="$(printf 'tools %s %s' "$VERSION" "$flags" | sha256sum | cut -c1-12)"
dir="$CACHE/$key"

complete() { for t in "${TOOLS[@]}"; do [ -x "$dir/bin/$t" ] || return 1; done; }

if ! complete; then
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.build.XXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "building llama.cpp tools $VERSION ($flags) -> $dir (several minutes)" >&2
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp/sdist" "llama-cpp-python==$VERSION" >&2
  tar -xzf "$tmp"/sdist/llama_cpp_python-*.tar.gz -C "$tmp"
  src="$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)"
  # shellcheck disable=SC2086
  nice -n 10 cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON $flags >&2
  nice -n 10 cmake --build "$tmp/build" -j "$(nproc)" --target "${TOOLS[@]}" >&2
  mkdir -p "$tmp/out/bin"
  for t in "${TOOLS[@]}"; do cp "$tmp/build/bin/$t" "$tmp/out/bin/"; done
  printf '%s\n%s\n' "$VERSION" "$flags" > "$tmp/out/BUILD_INFO"
  rm -rf "$dir" && mv "$tmp/out" "$dir"   # atomic: a half build never counts
fi
echo "$dir/bin"
