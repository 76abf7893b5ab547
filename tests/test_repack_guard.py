"""The AMX guard is exact: llama.cpp's repack buffers (use_extra_bufts) go off only where the
build carries AMX code and the CPU has AMX, and a multi-sequence batch on the real model, with
the engine's own choice and the Q4_1 split (the path the repacked kernels serve), decodes
without crashing on this CPU (in a child process, so a segfault fails the test cleanly)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from liteinfer.engines.llama_cpp_lazy import c_api, repack_buffers_safe

AMX_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 | "
PLAIN_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 | "


def test_only_an_amx_build_on_an_amx_cpu_turns_repack_off():
    assert repack_buffers_safe(AMX_BUILD, cpu_has_amx=True) is False
    assert repack_buffers_safe(AMX_BUILD, cpu_has_amx=False) is True  # ggml registers no AMX buffer type
    assert repack_buffers_safe(PLAIN_BUILD, cpu_has_amx=True) is True
    assert repack_buffers_safe(PLAIN_BUILD, cpu_has_amx=False) is True


def test_this_build_has_no_amx_code_so_repack_stays_on():
    info = c_api().llama_print_system_info().decode()
    assert "REPACK = 1" in info, info
    assert "AMX_INT8 = 1" not in info, f"llama.cpp built with AMX (use scripts/build_llama_wheel.sh): {info}"
    assert repack_buffers_safe() is True
    assert repack_buffers_safe(cpu_has_amx=True) is True  # on an AMX CPU as well


def test_multi_sequence_batch_with_repack_buffers_does_not_crash(default_model_path):
    code = textwrap.dedent(f"""
        from liteinfer.core.config import EngineSettings
        from liteinfer.engines.llama import LlamaEngine, SamplingParams
        from liteinfer.engines.llama_cpp_lazy import repack_buffers_safe
        eng = LlamaEngine({str(default_model_path)!r}, EngineSettings(split_q4_1=True, n_ctx=4096))
        prompts = ["a b c", "The capital of France is", "def f(x):", "1, 2, 3,", "Once upon a time",
                   "hello", "Translate to French: cat", "x" * 40]
        seqs = [eng.start(eng.tokenize(p), SamplingParams(temperature=0)) for p in prompts]
        eng.step([(s, s.n_pending) for s in seqs])  # every prompt in one multi-sequence batch
        for _ in range(7):
            eng.step([(s, s.n_pending) for s in seqs])
        print("repack", repack_buffers_safe(), "ok", sum(len(s.generated) for s in seqs))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.split()[-4:] == ["repack", "True", "ok", "64"], r.stdout
