#!/usr/bin/env bash
# Build llama-cpp-python from source once per (version, CPU flags) and cache the wheel.
# Why explicit flags: a GGML_NATIVE build on Intel CPUs with AMX segfaults on any
# multi-token decode (AMX repack buffers), so we name the ISA and turn AMX off.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PY:-.venv/bin/python}"
CACHE="${LITEINFER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/liteinfer/wheels}"

flags="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"
if [ "$(uname -m)" = "x86_64" ]; then
  has() { grep -m1 '^flags' /proc/cpuinfo | grep -qw "$1"; }
  flags+=" -DGGML_AVX=ON"
  has avx2 && flags+=" -DGGML_AVX2=ON"
  has fma && flags+=" -DGGML_FMA=ON"
  has f16c && flags+=" -DGGML_F16C=ON"
  has avx512f && flags+=" -DGGML_AVX512=ON"
  has avx512_vnni && flags+=" -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && flags+=" -DGGML_AVX512_BF16=ON"
  has avx512vbmi && flags+=" -DGGML_AVX512_VBMI=ON"
  flags+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
else
  # ARM boards: native detection is safe there (no AMX), and picks NEON/dotprod/i8mm.
  flags="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
fi
key="$(printf '%s %s %s' "$VERSION" "$flags" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-12)"
dir="$CACHE/$key"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION ($flags) -> $dir (takes a few minutes)"
  tmp="$(mktemp -d "$CACHE.tmp.XXXX" 2>/dev/null || { mkdir -p "$(dirname "$CACHE")"; mktemp -d "$CACHE.tmp.XXXX"; })"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION"
  mkdir -p "$CACHE" && rm -rf "$dir" && mv "$tmp" "$dir"   # atomic: a half build never counts
fi
"$PY" -m pip install --no-deps "$dir"/llama_cpp_python-*.whl
