#!/usr/bin/env bash
# Print the CMake flags for building llama.cpp on this CPU (used by the wheel and tools builds).
# Why explicit flags: a GGML_NATIVE build on Intel CPUs with AMX segfaults on any multi-token
# decode (AMX repack buffers), so on x86 we name the ISA extensions and turn AMX off.
set -euo pipefail
flags="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"
if [ "$(uname -m)" = "x86_64" ]; then
  cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo)"
  has() { grep -qw "$1" <<<"$cpu_flags"; }
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
  # ARM boards: native detection is safe there (no AMX) and picks NEON/dotprod/i8mm.
  flags="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
fi
echo "$flags"
