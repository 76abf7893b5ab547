"""The measured effects quoted in docs/tuning.md: one knob at a time against a baseline.

Each row changes one knob from the baseline and measures it in a fresh child process (so
peak RSS is that config's own), repeated --repeat times, best kept (on a shared machine the
best run is the least disturbed one). The ratio column compares generated tokens per
CPU-second (robust to other jobs sharing the cores; with 2 threads it also counts the
threads' spin-waiting). The chat mix workload, SmolLM2 Q4_1.

    python benchmarks/tuning_effects.py [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liteinfer.core.catalog import resolve_llm  # noqa: E402
from liteinfer.core.config import DeviceConfig  # noqa: E402
from liteinfer.tune.search import apply_params  # noqa: E402
from liteinfer.tune.trial import measure_isolated  # noqa: E402
from liteinfer.tune.workload import chat_mix  # noqa: E402

BASE = {"engine.n_threads": 1, "scheduler.max_batch": 8, "engine.n_batch": 512, "engine.n_ubatch": 512,
        "scheduler.prefill_chunk": 256, "engine.kv_type": "f16", "engine.flash_attn": True,
        "engine.use_mmap": True}
ROWS = [
    ("baseline (1 thread, max_batch 8, f16 KV, flash attn, mmap)", {}),
    ("threads 2", {"engine.n_threads": 2}),
    ("max_batch 1 (no batching)", {"scheduler.max_batch": 1}),
    ("max_batch 4", {"scheduler.max_batch": 4}),
    ("prefill_chunk 32", {"scheduler.prefill_chunk": 32}),
    ("n_batch/n_ubatch 64", {"engine.n_batch": 64, "engine.n_ubatch": 64}),
    ("KV q8_0 (K and V)", {"engine.kv_type": "q8_0"}),
    ("KV q4_0 (K and V)", {"engine.kv_type": "q4_0"}),
    ("flash attention off", {"engine.flash_attn": False}),
    ("mmap off (read the file)", {"engine.use_mmap": False}),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--runner", choices=["scheduler", "engine"], default="scheduler",
                    help="scheduler: the serving path (default); engine: the engine-only loop (docs/tuning.md's "
                         "table was measured with it)")
    args = ap.parse_args()
    model = resolve_llm("smollm2-135m")
    reqs = chat_mix(args.requests, args.max_tokens)
    base = DeviceConfig()
    base.engine.n_ctx = args.n_ctx
    results = []
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    print(f"{'change':<58} {'tok/s':>7} {'tok/CPU-s':>9} {'ratio':>6} {'p95 ms':>8} {'TTFT p95':>9} {'RSS MB':>7} "
          f"{'load s':>7} {'loadavg':>7}")
    ref = None
    for name, change in ROWS:
        cfg = apply_params(base, {**BASE, **change})
        runs = [measure_isolated(model, cfg, reqs, runner=args.runner) for _ in range(args.repeat)]
        best = max(runs, key=lambda m: m["tok_per_cpu_s"])
        best["tok_s"] = max(m["tok_s"] for m in runs)
        best["rss_peak_mb"] = min(m["rss_peak_mb"] for m in runs)
        best["load_s"] = min(m["load_s"] for m in runs)
        ref = ref or best
        results.append({"change": name, **best, "all_tok_s": [m["tok_s"] for m in runs]})
        print(f"{name:<58} {best['tok_s']:>7.1f} {best['tok_per_cpu_s']:>9.1f} "
              f"{best['tok_per_cpu_s'] / ref['tok_per_cpu_s']:>6.2f} "
              f"{best['latency_p95_ms']:>8.0f} {best['ttft_p95_ms']:>9.0f} {best['rss_peak_mb']:>7.0f} "
              f"{best['load_s']:>7.2f} {best['loadavg_1m']:>7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
