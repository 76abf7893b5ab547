"""Is the planner fast, and is its config as good as searching?

1. Profiling time: `python hw_profiler.py --quick` and the full profile, as a user runs
   them (fresh process, model load included). Target: <= 30 s.
2. Serving throughput (generated tok/s), same workload, same run:
     - the default DeviceConfig,
     - the planner's config (from the full profile of step 1),
     - every config of an exhaustive sweep over what the planner decides
       (engine threads x scheduler max_batch x prefill chunk).
   --via scheduler (default): a burst of chat requests through the server's own
   ContinuousScheduler (adaptive controller, prefix cache, streaming text), no HTTP;
   --via engine: the tuner's engine-level batched-decode loop (liteinfer.tune.trial).
   Each trial runs in a child process; one past --trial-timeout counts as 0 tok/s. Trials
   are paired: each other config runs right beside a run of the planned one and is scored
   by the median ratio to it, so load drift on a shared machine cancels out.
   Target: planned >= 90% of the sweep's best.

    python benchmarks/planner.py                 # 17 pairs: ~10 min quiet, ~25 min on a busy 2-core box
    python benchmarks/planner.py --rounds 3      # medians over 3 pairs per config
    python benchmarks/planner.py --requests 8 --batches 1,16 --chunks 256   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liteinfer.core.config import DeviceConfig, load_config  # noqa: E402
from liteinfer.core.files import atomic_write_text  # noqa: E402

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


def scheduler_trial(model: str, cfg: DeviceConfig, requests) -> dict:
    """Serve a burst of requests through ContinuousScheduler; generated tok/s and TTFT."""
    import threading

    from liteinfer.engines.llama import LlamaEngine, SamplingParams
    from liteinfer.scheduler.continuous import ContinuousScheduler, GenRequest
    from liteinfer.tune.trial import percentile
    from liteinfer.tune.workload import tokenize_requests

    engine = LlamaEngine(model, cfg.engine)
    try:
        prompts = tokenize_requests(engine, requests)
        warm = engine.start(prompts[0][:8], SamplingParams(temperature=0.0))  # fault in weights
        engine.step([(warm, warm.n_pending)])
        engine.release(warm, keep_prefix=False)
        sched = ContinuousScheduler(engine, cfg.scheduler, max_queue=len(prompts) + 1)
        done, lock = threading.Event(), threading.Lock()
        tokens, first, errors, finished = [0], {}, [], [0]
        t0 = time.perf_counter()

        def emitter(i: int):
            def emit(ev) -> None:
                with lock:
                    if ev.kind == "text":
                        first.setdefault(i, time.perf_counter() - t0)
                        return
                    if ev.kind == "error":
                        errors.append(ev.text)
                    else:
                        tokens[0] += (ev.usage or {}).get("completion_tokens", 0)
                    finished[0] += 1
                    if finished[0] == len(prompts):
                        done.set()
            return emit

        sched.start()
        for i, (p, r) in enumerate(zip(prompts, requests)):
            sched.submit(GenRequest(p, SamplingParams(max_tokens=r.max_tokens, temperature=0.0), emit=emitter(i)))
        done.wait()
        wall = time.perf_counter() - t0
        sched.stop()
    finally:
        engine.close()
    if errors:
        raise SystemExit(f"requests failed: {errors[0]}")
    return {"tok_s": tokens[0] / wall, "generated_tokens": tokens[0], "seconds": wall, "steps": sched.steps,
            "ttft_p95_ms": percentile([v * 1000 for v in first.values()], 95), "loadavg_1m": os.getloadavg()[0]}


def isolated(via: str, model: str, cfg: DeviceConfig, requests, timeout_s: float) -> dict:
    """One trial in a child process (this script with --trial)."""
    from dataclasses import asdict

    from liteinfer.core.errors import LiteInferError
    from liteinfer.tune.trial import measure_isolated

    if via == "engine":
        return measure_isolated(model, cfg, requests, timeout_s=timeout_s)
    payload = json.dumps({"model": str(model), "config": cfg.model_dump(mode="json"),
                          "requests": [asdict(r) for r in requests]})
    try:
        out = subprocess.run([sys.executable, __file__, "--trial"], input=payload, capture_output=True, text=True,
                             timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise LiteInferError(f"trial timed out after {timeout_s:.0f} s") from None
    if out.returncode != 0:
        raise LiteInferError(f"trial failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _trial_child() -> int:
    from liteinfer.tune.workload import Request

    d = json.loads(sys.stdin.read())
    m = scheduler_trial(d["model"], DeviceConfig.model_validate(d["config"]), [Request(**r) for r in d["requests"]])
    print(json.dumps(m))
    return 0


def main() -> int:
    if "--trial" in sys.argv:
        return _trial_child()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--chunks", default="64,256")
    ap.add_argument("--threads", default=None, help="thread counts to sweep (default 1..usable cores)")
    ap.add_argument("--trial-timeout", type=float, default=180.0, help="seconds before a trial counts as 0 tok/s")
    ap.add_argument("--via", choices=("scheduler", "engine"), default="scheduler")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from liteinfer.core.catalog import resolve_llm
    from liteinfer.core.errors import LiteInferError
    from liteinfer.hardware.probe import probe
    from liteinfer.tune.workload import chat_mix

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        quick_s, _ = time_profile(True, Path(tmp) / "quick.json")
        full_s, planned = time_profile(False, Path(tmp) / "full.json")
    p = probe()
    print(f"# machine: {p.cpu.model_name}, {p.usable_cores} usable cores, load avg {load0:.1f} at start; "
          f"serving measured via {args.via}")
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

    # Paired trials: every other config runs right next to the planned one (alternating which
    # goes first), and is scored by its ratio to that planned run. On a shared machine the
    # load drifts by 2x within minutes; a pair sees nearly the same load, an unpaired table
    # mostly measures when each trial happened to run.
    others = [n for n in configs if n != "planned"]
    pairs = [(n, r) for r in range(args.rounds) for n in random.Random(r).sample(others, len(others))]
    ratios: dict[str, list[float]] = {n: [] for n in others}
    best: dict[str, dict] = {}
    t0 = time.perf_counter()

    def trial(name: str) -> dict:
        try:  # a child process per trial: a crash or a collapse costs one timeout, not the run
            m = isolated(args.via, model, configs[name], reqs, args.trial_timeout)
        except LiteInferError as e:
            m = {"tok_s": 0.0, "ttft_p95_ms": float("nan"), "loadavg_1m": os.getloadavg()[0], "error": str(e)}
        if name not in best or m["tok_s"] > best[name]["tok_s"]:
            best[name] = m
        return m

    for i, (name, _) in enumerate(pairs, 1):
        first, second = (name, "planned") if i % 2 else ("planned", name)
        m1, m2 = trial(first), trial(second)
        mp, mc = (m2, m1) if first == name else (m1, m2)
        if mp["tok_s"] > 0:
            ratios[name].append(mc["tok_s"] / mp["tok_s"])
        print(f"  [{i}/{len(pairs)}] {name:<14} {mc['tok_s']:7.1f} tok/s vs planned {mp['tok_s']:7.1f} "
              f"(load {mc['loadavg_1m']:.1f}, {time.perf_counter() - t0:.0f} s)"
              f"{'  ' + mc['error'] if 'error' in mc else ''}", file=sys.stderr)

    def score(name: str) -> float:  # median ratio to the planned config over the rounds
        r = ratios.get(name) or [0.0]
        return statistics.median(r)

    sweep = [n for n in others if n != "default"]
    top_name = max(sweep, key=score)
    top = score(top_name)
    print(f"\n{'config':<16}{'threads':>8}{'max_batch':>10}{'chunk':>7}{'tok/s':>9}{'/planned':>10}{'ttft p95':>10}")
    rows = [("default", default), ("planned", planned), (f"best: {top_name}", configs[top_name])]
    for label, cfg in rows:
        name = label.removeprefix("best: ")
        m = best[name]
        rel = 1.0 if name == "planned" else score(name)
        print(f"{label:<16}{cfg.engine.n_threads or p.usable_cores:>8}{cfg.scheduler.max_batch:>10}"
              f"{cfg.scheduler.prefill_chunk:>7}{m['tok_s']:>9.1f}{rel:>10.2f}"
              f"{m['ttft_p95_ms']:>9.0f}ms" + ("  (timed out)" if "error" in m else ""))
    planned_ratio = 1.0 / top if top > 0 else float("inf")
    default_ratio = 1.0 / score("default") if score("default") > 0 else float("inf")
    print("\n(tok/s: best run of each config; /planned: median ratio to the planned run beside it)")
    print(f"planned / best of {len(sweep)}-config sweep: {min(planned_ratio, 9.99):.2f} (target >= "
          f"{TARGET_RATIO:.2f}: {'ok' if planned_ratio >= TARGET_RATIO else 'MISSED'}); "
          f"planned / default: {min(default_ratio, 9.99):.2f}")
    print(f"load avg now {os.getloadavg()[0]:.1f}: numbers taken while other work ran are noisy")
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "profile_quick_s": quick_s, "profile_full_s": full_s, "planned": planned.model_dump(),
            "results": best, "ratios_to_planned": ratios, "best": top_name,
            "ratio_planned_best": planned_ratio, "ratio_planned_default": default_ratio}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
