"""Single-stream speed: liteinfer's engine against llama-cpp-python's high-level `Llama`,
same model, same threads, same prompt, in one run. Each side runs in its own child process so
its peak RSS is its own.

    .venv/bin/python benchmarks/decode.py [-m smollm2-135m] [--prompt-tokens 256] [--gen 128] [--repeats 3]

Targets (foundation issue): decode and prompt tok/s ratio >= 1.0; liteinfer peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old barn. " * 64)


def _liteinfer(model: str, threads: int, n_prompt: int, n_gen: int, repeats: int) -> dict:
    from liteinfer.core.config import EngineSettings
    from liteinfer.engines.llama import LlamaEngine, SamplingParams

    eng = LlamaEngine(model, EngineSettings(n_threads=threads))
    eng.prefix_cache = False  # measure compute, not cache hits
    prompt = eng.tokenize(TEXT)[:n_prompt]
    best_p, best_d = 0.0, 0.0
    for _ in range(repeats):
        seq = eng.start(prompt, SamplingParams(temperature=0, max_tokens=n_gen))
        t0 = time.perf_counter()
        while seq.n_pending > 1 or not seq.generated:
            eng.step([(seq, min(seq.n_pending, eng.n_batch))])
        t1 = time.perf_counter()
        for _ in range(n_gen):
            eng.step([(seq, 1)])
        t2 = time.perf_counter()
        eng.release(seq, keep_prefix=False)
        best_p, best_d = max(best_p, n_prompt / (t1 - t0)), max(best_d, n_gen / (t2 - t1))
    return {"prompt_tps": best_p, "decode_tps": best_d}


def _llama_cpp_python(model: str, threads: int, n_prompt: int, n_gen: int, repeats: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(TEXT.encode(), add_bos=True)[:n_prompt]
    best_p, best_d = 0.0, 0.0
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        t1 = None
        for i, _tok in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
            if i == 0:
                t1 = time.perf_counter()
            if i == n_gen:
                break
        t2 = time.perf_counter()
        best_p, best_d = max(best_p, n_prompt / (t1 - t0)), max(best_d, n_gen / (t2 - t1))
    return {"prompt_tps": best_p, "decode_tps": best_d}


def child(args) -> None:
    fn = _liteinfer if args.child == "liteinfer" else _llama_cpp_python
    out = fn(args.model_path, args.threads, args.prompt_tokens, args.gen, args.repeats)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["liteinfer", "llama-cpp-python"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args)
        return 0
    from liteinfer.core.catalog import resolve_llm
    from liteinfer.hardware.cores import usable_cores

    path, threads = str(resolve_llm(args.model)), args.threads or usable_cores()
    load = os.getloadavg()[0]
    print(f"model {path}, threads {threads}, load average {load:.2f}"
          + ("  WARNING: machine busy, numbers are noisy" if load > 0.5 else ""))
    results = {}
    for name in ("liteinfer", "llama-cpp-python"):
        cmd = [sys.executable, __file__, "--child", name, "--model-path", path, "--threads", str(threads),
               "--prompt-tokens", str(args.prompt_tokens), "--gen", str(args.gen), "--repeats", str(args.repeats)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name} failed: {r.stderr.strip().splitlines()[-1:]}")
            return 1
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
    lite, peer = results["liteinfer"], results["llama-cpp-python"]
    print(f"{'':<18}{'prompt tok/s':>14}{'decode tok/s':>14}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<18}{r['prompt_tps']:>14.1f}{r['decode_tps']:>14.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"ratio prompt {lite['prompt_tps'] / peer['prompt_tps']:.2f}, decode "
          f"{lite['decode_tps'] / peer['decode_tps']:.2f} (target >= 1.0); liteinfer peak RSS "
          f"{lite['peak_rss_mb']:.0f} MB (target <= 300)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
