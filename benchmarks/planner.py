"""Is the planner fast, and is its config as good as searching?

1. Profiling time: `python hw_profiler.py --quick` and the full profile, as a user runs
   them (fresh process, model load included). Target: <= 30 s.
2. Serving throughput (generated tok/s) on the real engine, same workload, same run:
     - the default DeviceConfig,
     - the planner's config (from the full profile of step 1),
     - every config of an exhaustive sweep over what the planner decides
       (engine threads x scheduler max_batch x prefill chunk),
   through the tuner's continuous-batching measurement (liteinfer.tune.trial.measure_isolated:
   a child process per trial, a burst of chat requests, up to max_batch sequences per
   llama_decode step; a trial past --trial-timeout counts as 0 tok/s). Each config
   is measured --rounds times in shuffled order and keeps its best run: on a shared machine
   the best run is the least disturbed one. Target: planned >= 90% of the sweep's best.

    python benchmarks/planner.py                 # ~5-10 min on a quiet 2-core machine
    python benchmarks/planner.py --rounds 1 --requests 12   # a quicker look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liteinfer.config import DeviceConfig, load_config  # noqa: E402
from liteinfer.files import atomic_write_text  # noqa: E402

TARGET_PROFILE_S = 30.0
TARGET_RATIO = 0.90


def time_profile(quick: bool, out: Path) -> tuple[float, DeviceConfig]:
    cmd = [sys.executable, str(ROOT / "hw_profiler.py"), "-o", str(out)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hw_profiler.py failed: {r.stderr.strip()}")
    return seconds, load_config(out)


def with_knobs(base: DeviceConfig, threads: int, max_batch: int, chunk: int) -> DeviceConfig:
    cfg = base.model_copy(deep=True)
    cfg.engine.n_threads = cfg.engine.n_threads_batch = threads
    cfg.scheduler.max_batch = max_batch
    cfg.scheduler.prefill_chunk = chunk
    cfg.engine.n_seq_max = max(cfg.engine.n_seq_max, max_batch)
    cfg.engine.n_batch = max(cfg.engine.n_batch, chunk + max_batch)
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="1,4,8,16,32")
    ap.add_argument("--chunks", default="64,256")
    ap.add_argument("--threads", default=None, help="thread counts to sweep (default 1..usable cores)")
    ap.add_argument("--trial-timeout", type=float, default=180.0, help="seconds before a trial counts as 0 tok/s")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from liteinfer.catalog import resolve_llm
    from liteinfer.errors import LiteInferError
    from liteinfer.hardware.probe import probe
    from liteinfer.tune.trial import measure_isolated
    from liteinfer.tune.workload import chat_mix

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        quick_s, _ = time_profile(True, Path(tmp) / "quick.json")
        full_s, planned = time_profile(False, Path(tmp) / "full.json")
    p = probe()
    print(f"# machine: {p.cpu.model_name}, {p.usable_cores} usable cores, load avg {load0:.1f} at start")
    print(f"profile --quick: {quick_s:5.1f} s   full: {full_s:5.1f} s   (target <= {TARGET_PROFILE_S:.0f} s: "
          f"{'ok' if max(quick_s, full_s) <= TARGET_PROFILE_S else 'MISSED'})")
    e, s = planned.engine, planned.scheduler
    print(f"planned: threads {e.n_threads}, max_batch {s.max_batch}, prefill_chunk {s.prefill_chunk}, "
          f"n_ctx {e.n_ctx} {e.type_k}; measured on load avg {planned.device['measurements'].get('load_avg_1m')}")

    model = resolve_llm(args.model)
    reqs = chat_mix(args.requests, args.max_tokens)
    default = DeviceConfig()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else range(1, p.usable_cores + 1)
    batches = [int(b) for b in args.batches.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    configs: dict[str, DeviceConfig] = {"default": default, "planned": planned}
    for t, b, c in itertools.product(threads, batches, chunks):
        configs[f"t{t} b{b} c{c}"] = with_knobs(default, t, b, c)

    order = [name for r in range(args.rounds) for name in random.Random(r).sample(list(configs), len(configs))]
    best: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, name in enumerate(order, 1):
        try:  # a child process per trial: a crash or a collapse costs one timeout, not the run
            m = measure_isolated(model, configs[name], reqs, timeout_s=args.trial_timeout)
        except LiteInferError as e:
            m = {"tok_s": 0.0, "ttft_p95_ms": float("nan"), "loadavg_1m": os.getloadavg()[0], "error": str(e)}
        if name not in best or m["tok_s"] > best[name]["tok_s"]:
            best[name] = m
        print(f"  [{i}/{len(order)}] {name:<14} {m['tok_s']:7.1f} tok/s  (load {m['loadavg_1m']:.1f}, "
              f"{time.perf_counter() - t0:.0f} s){'  ' + m['error'] if 'error' in m else ''}", file=sys.stderr)

    sweep = {k: v for k, v in best.items() if k not in ("default", "planned")}
    top_name = max(sweep, key=lambda k: sweep[k]["tok_s"])
    top = sweep[top_name]["tok_s"]
    print(f"\n{'config':<16}{'threads':>8}{'max_batch':>10}{'chunk':>7}{'tok/s':>9}{'vs best':>9}{'ttft p95':>10}")
    rows = [("default", default), ("planned", planned), (f"best: {top_name}", configs[top_name])]
    for label, cfg in rows:
        m = best[label.removeprefix("best: ")]
        print(f"{label:<16}{cfg.engine.n_threads or p.usable_cores:>8}{cfg.scheduler.max_batch:>10}"
              f"{cfg.scheduler.prefill_chunk:>7}{m['tok_s']:>9.1f}{m['tok_s'] / top:>9.2f}{m['ttft_p95_ms']:>9.0f}ms")
    ratio = best["planned"]["tok_s"] / top
    print(f"\nplanned / best of {len(sweep)}-config sweep: {ratio:.2f} (target >= {TARGET_RATIO:.2f}: "
          f"{'ok' if ratio >= TARGET_RATIO else 'MISSED'}); planned / default: "
          f"{best['planned']['tok_s'] / best['default']['tok_s']:.2f}")
    print(f"load avg now {os.getloadavg()[0]:.1f}: numbers taken while other work ran are noisy")
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "profile_quick_s": quick_s, "profile_full_s": full_s, "planned": planned.model_dump(),
            "results": best, "best": top_name, "ratio_planned_best": ratio}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
