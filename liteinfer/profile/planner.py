"""Probe + device library entry + short measurements -> DeviceConfig.

`plan()` is a pure function (tests feed it recorded probes and fixed measurements);
`measure()` runs the 5-20 s of real measurements; `profile()` does all three. Every choice
is written down with its reason in config.device["reasons"], so `liteinfer doctor` can
explain it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from liteinfer.core.catalog import pull
from liteinfer.core.config import DeviceConfig, EngineSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.llama import LlamaEngine
from liteinfer.engines.llama_cpp_lazy import repack_buffers_safe
from liteinfer.hardware.devices import DeviceEntry, Match, best_match
from liteinfer.hardware.fingerprint import fingerprint
from liteinfer.hardware.probe import Probe, probe
from liteinfer.profile.microbench import (
    measure_engine,
    memory_bandwidth,
    model_facts,
    probe_step_seconds,
    set_threads,
)

MB = 2**20
RUNTIME_OVERHEAD_MB = 300  # Python + llama.cpp + FastAPI resident set besides weights and KV
MEMORY_FRACTION = 0.8  # of the memory this process may use; the rest is for the OS and others
KV_FRACTION = 0.5  # share of what is left after the weights that the KV cache may take
MAX_N_CTX = 65536

# Bits per weight of llama.cpp quant types (block scales included), for size estimates.
QUANT_BPW = {"Q4_0": 4.5, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q8_0": 8.5, "F16": 16.0}
MODEL_CLASSES = [0.135, 0.5, 1.5, 3.0, 7.0, 14.0, 32.0, 70.0]  # billions of parameters
KV_BYTES_PER_PARAM_TOKEN = 23040 / 135e6  # SmolLM2's ratio, a rough guide for the size table


@dataclass
class Plan:
    config: DeviceConfig
    reasons: list[str]


def _round_down(x: float, step: int) -> int:
    return max(step, int(x) // step * step)


def _pick_threads(p: Probe, m: dict[str, Any], reasons: list[str]) -> int:
    sweep = {int(k): v for k, v in (m.get("threads_batch4_tok_s") or {}).items() if v}
    if sweep:
        best = max(sweep.values())
        # fewest threads within 3% of the best: fewer threads leave a core for HTTP/tokenizing
        n = min(k for k, v in sweep.items() if v >= 0.97 * best)
        reasons.append(f"threads={n}: measured {sweep[n]:.1f} tok/s at batch 4 (sweep {sweep})")
        return n
    n = min(p.usable_cores, p.cpu.big_cores())
    why = "physical cores this process may use"
    if p.cpu.big_little:
        why = f"the {p.cpu.big_cores()} big cores (slow cores hold back every step's barrier)"
    if p.container.cpu_quota is not None:
        why += f", cgroup quota {p.container.cpu_quota:g} CPUs"
    reasons.append(f"threads={n}: {why}")
    return n


MAX_STEP_MS = 1000.0  # a batch step longer than this makes streaming feel stuck


def _pick_batch(m: dict[str, Any], cores: int, entry: DeviceEntry | None, reasons: list[str]) -> int:
    """Twice the knee of the batched-decode curve: the smallest measured batch within 5% of
    the best throughput (steps under MAX_STEP_MS).

    max_batch is a ceiling: the scheduler fills it only under load, and the adaptive
    controller trims the batch when latency targets slip. So it sits one doubling past the
    knee: each point of a 5-20 s profile is a fraction of a second and noisy, and a ceiling
    set too low caps serving throughput for good, while one set a step high costs latency
    only at loads that queue anyway. Taking the knee against the maximum (not the first dip)
    keeps one noisy point from deciding.
    """
    curve = sorted((int(k), float(v)) for k, v in (m.get("batched_decode_tok_s") or {}).items() if v)
    curve = [(b, t) for b, t in curve if b / t * 1000 <= MAX_STEP_MS] or curve[:1]
    if len(curve) >= 2:
        top = max(t for _, t in curve)
        knee, knee_t = next((b, t) for b, t in curve if t >= 0.95 * top)
        b = knee * 2 if 2 * knee / top * 1000 <= MAX_STEP_MS else knee
        reasons.append(f"max_batch={b}: batched decode {dict(curve)} tok/s, knee at {knee} "
                       f"(smallest batch within 5% of the best){', doubled for headroom' if b > knee else ''}")
        return min(b, 256)
    if entry is not None:
        reasons.append(f"max_batch={entry.recommended.max_batch}: library default for {entry.id}")
        return entry.recommended.max_batch
    b = min(64, 4 * cores)
    reasons.append(f"max_batch={b}: 4 per core (no measurement)")
    return b


def model_size_mb(params_b: float, quant: str) -> int:
    return int(params_b * 1e9 * QUANT_BPW[quant] / 8 / MB)


def model_table(budget_mb: int, bandwidth_gbs: float | None, n_ctx: int,
                measured: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """For each model class and quant type: size, whether it fits, estimated decode tok/s.

    The estimate is the lower of two bounds: memory bandwidth (decode reads every weight
    once per token) and the measured model's speed scaled by size (compute grows the same way).
    `measured` = (decode tok/s, model MB) of the model the planner ran.
    """
    rows = []
    for params in MODEL_CLASSES:
        for quant in ("Q4_0", "Q4_K_M", "Q8_0"):
            size = model_size_mb(params, quant)
            kv = params * 1e9 * KV_BYTES_PER_PARAM_TOKEN * min(n_ctx, 4096) / MB
            row: dict[str, Any] = {"params_b": params, "quant": quant, "size_mb": size,
                                   "fits": size + kv + RUNTIME_OVERHEAD_MB <= budget_mb}
            bounds = []
            if bandwidth_gbs:  # ~60% of copy bandwidth is what decode kernels reach
                bounds.append(bandwidth_gbs * 0.6 * 1e9 / (size * MB))
            if measured:
                bounds.append(measured[0] * measured[1] / size)
            if bounds:
                row["est_decode_tok_s"] = round(min(bounds), 1)
            rows.append(row)
    return rows


def _pick_model(table: list[dict[str, Any]], p: Probe, reasons: list[str]) -> str:
    # ARM cores get llama.cpp's repacked Q4_0 kernels; x86 without AVX2 is best on Q4_0 too.
    quant = "Q4_0" if p.cpu.arch in ("aarch64", "arm64") or "avx2" not in p.cpu.isa else "Q4_K_M"
    ok = [r for r in table if r["quant"] == quant and r["fits"] and r.get("est_decode_tok_s", 99) >= 8]
    if not ok:
        ok = [r for r in table if r["quant"] == quant and r["fits"]][:1]
    if not ok:
        reasons.append("model: nothing above 135M fits in memory")
        return "135M Q4_0"
    best = ok[-1]
    label = f"{best['params_b']:g}B {quant}" if best["params_b"] >= 0.5 else f"{best['params_b'] * 1000:g}M {quant}"
    speed = f", ~{best['est_decode_tok_s']} tok/s decode" if "est_decode_tok_s" in best else ""
    reasons.append(f"model: {label} is the largest that fits ({best['size_mb']} MB{speed}, >= 8 tok/s wanted)")
    return label


def plan(p: Probe, entry: DeviceEntry | None = None, measurements: dict[str, Any] | None = None,
         base: DeviceConfig | None = None, match_info: Match | None = None) -> Plan:
    """The config for this machine. Pure: same inputs, same config."""
    m = dict(measurements or {})
    cfg = (base or DeviceConfig()).model_copy(deep=True)
    reasons: list[str] = []
    eng, sch, srv = cfg.engine, cfg.scheduler, cfg.server

    # Threads.
    n = _pick_threads(p, m, reasons)
    eng.n_threads = n
    eng.n_threads_batch = n

    # Latency targets scale with the machine: a 5 tok/s board cannot promise 200 ms per token.
    decode1 = m.get("decode_tok_s")
    if decode1:
        sch.target_itl_ms = round(min(1000.0, max(200.0, 1500.0 / decode1)), 1)
        sch.target_ttft_ms = round(min(10000.0, max(1500.0, 4 * sch.target_itl_ms)), 1)

    max_batch = _pick_batch(m, n, entry, reasons)
    sch.max_batch = max_batch

    # Prefill chunk: as many prompt tokens as fit in one target step, 64..512.
    prompt = m.get("prompt_tok_s")
    if prompt:
        sch.prefill_chunk = min(512, max(64, _round_down(prompt * sch.target_itl_ms / 1000, 64)))
        reasons.append(f"prefill_chunk={sch.prefill_chunk}: {prompt:.0f} prompt tok/s x {sch.target_itl_ms:.0f} ms")
    eng.n_batch = max(512, sch.prefill_chunk + max_batch)
    eng.n_ubatch = min(eng.n_ubatch, eng.n_batch)
    eng.n_seq_max = min(256, max_batch + max(4, max_batch // 2))  # spare slots keep cached prefixes

    # Memory: weights + KV + runtime within a fraction of what we may use.
    budget = int(p.effective_memory_mb * MEMORY_FRACTION)
    weights = int((m.get("model_bytes") or 0) / MB)
    kv_tok = m.get("kv_bytes_per_token_f16")
    left = budget - weights - RUNTIME_OVERHEAD_MB
    if weights and weights > budget:
        reasons.append(f"memory: the model ({weights} MB) exceeds the budget ({budget} MB): it will page from disk")
    n_ctx_train = m.get("n_ctx_train") or 8192
    # One full-length sequence, or 256 cells for each sequence of a full batch (the cache is
    # shared and most requests are short; a full cache preempts, it does not fail), whichever is more.
    want = min(MAX_N_CTX, max(min(n_ctx_train, 4096), max_batch * 256))
    if kv_tok and left > 0:
        # q8_0 K/V always: half of f16's memory for the same cells (the service RSS is the
        # product's promise) at a decode speed within run-to-run noise on the machines measured
        kv_budget = left * KV_FRACTION * MB
        fit_q8 = kv_budget / (kv_tok * 8.5 / 16)  # q8_0 = 8.5 bits per value vs 16
        eng.type_k = eng.type_v = "q8_0"
        eng.flash_attn = True  # llama.cpp needs flash attention for a quantized V cache
        n_ctx = int(min(want, fit_q8))
        reasons.append(f"kv: q8_0 + flash attention, n_ctx={n_ctx} ({n_ctx * kv_tok * 8.5 / 16 / MB:.0f} MB; "
                       f"{int(fit_q8)} cells would fit the {kv_budget / MB:.0f} MB KV budget)")
        eng.n_ctx = max(512, _round_down(n_ctx, 256))
    elif entry is not None:
        eng.n_ctx = entry.recommended.n_ctx
        eng.type_k = eng.type_v = entry.recommended.kv_type
        if entry.recommended.kv_type not in ("f16", "f32", "bf16"):
            eng.flash_attn = True
        reasons.append(f"kv: {eng.type_k}, n_ctx={eng.n_ctx} from the library entry (model not measured)")
    else:
        eng.n_ctx = 4096 if budget < 4096 else 8192
        reasons.append(f"kv: f16, n_ctx={eng.n_ctx} (model not measured)")
    sch.max_batch = max_batch = min(max_batch, max(1, eng.n_ctx // 256))  # >= 256 cells per sequence

    # mmap always (fast start, weights shared with the page cache); mlock only when allowed
    # and cheap, so the weights are never evicted under memory pressure.
    eng.use_mmap = True
    lock_ok = p.memory.memlock_limit_mb is None or (weights and p.memory.memlock_limit_mb >= weights)
    eng.use_mlock = bool(weights and lock_ok and weights <= 0.5 * p.effective_memory_mb)
    reasons.append(
        "mlock on: weights stay resident" if eng.use_mlock else
        f"mlock off: RLIMIT_MEMLOCK {p.memory.memlock_limit_mb} MB" if not lock_ok else "mlock off"
    )
    if not repack_buffers_safe(cpu_has_amx="amx" in p.cpu.isa):
        eng.use_extra_bufts = False
        reasons.append("use_extra_bufts off: this llama.cpp build has AMX code, and its AMX repack buffers "
                       "crash batched decode on this CPU")
    elif "amx" in p.cpu.isa:
        reasons.append("use_extra_bufts on: this llama.cpp build has no AMX code, so the repack buffers are "
                       "safe on this AMX CPU")

    # Server and one-shot limits follow the batch.
    srv.max_queue = max(8, 4 * max_batch)
    cfg.oneshot.intra_op_threads = n
    cfg.oneshot.max_batch = 8 if budget < 1024 else 32
    # Speech (serve --voice): Whisper on the chat model's cores, int8 (CTranslate2's CPU kernels);
    # one transcription at a time, so the queue bound follows the server's
    cfg.speech.stt_threads = n
    cfg.speech.stt_compute_type = "int8"
    cfg.speech.max_queue = max(4, min(16, srv.max_queue // 4))
    reasons.append(f"speech: Whisper int8 on {n} threads, {cfg.speech.max_queue} transcriptions may wait")

    # Power profile: only where there is something to set.
    if not p.power.cpufreq:
        cfg.power.profile = "unchanged"
        reasons.append("power: unchanged (no cpufreq interface)")
    elif entry is not None and match_info is not None and match_info.closeness in ("exact", "close"):
        cfg.power.profile = entry.recommended.power_profile
        reasons.append(f"power: {cfg.power.profile} (library entry {entry.id})")
    else:
        cfg.power.profile = "dynamic" if p.power.battery else "balanced"
        reasons.append(f"power: {cfg.power.profile}")

    bandwidth = m.get("mem_bandwidth_gbs") or (entry.memory.bandwidth_gbs * 0.5 if entry and entry.memory.bandwidth_gbs else None)
    measured = (decode1, weights) if decode1 and weights else None
    table = model_table(budget, bandwidth, eng.n_ctx, measured)
    recommended_model = _pick_model(table, p, reasons)

    cfg.device = {
        "profiled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint(p),
        "probe": {
            "board": p.board, "cloud": p.cloud, "cpu": p.cpu.model_name, "arch": p.cpu.arch,
            "physical_cores": p.cpu.physical_cores, "logical_cores": p.cpu.logical_cores,
            "big_cores": p.cpu.big_cores(), "isa": p.cpu.isa, "memory_mb": p.memory.total_mb,
            "effective_memory_mb": p.effective_memory_mb, "usable_cores": p.usable_cores,
            "cpu_quota": p.container.cpu_quota, "memory_limit_mb": p.container.memory_limit_mb,
            "accelerators": [f"{a.kind}: {a.name}" for a in p.compute_accelerators()],
        },
        "match": None if match_info is None else {
            "id": match_info.entry.id, "name": match_info.entry.name, "score": match_info.score,
            "closeness": match_info.closeness, "reasons": match_info.reasons,
        },
        "measurements": m,
        "memory_budget_mb": budget,
        "recommended_model": recommended_model,
        "models": [r for r in table if r["fits"]],
        "reasons": reasons,
    }
    return Plan(config=cfg, reasons=reasons)


# --- the measuring wrapper ----------------------------------------------------------------


def measure(p: Probe, model: str = "smollm2-135m", quick: bool = False, log=print) -> dict[str, Any]:
    """Real measurements for plan(): bandwidth, model sizes, engine speed (and a thread sweep).

    quick: bandwidth, batch 1/4/16 at the planned thread count, within ~10 s (model load
    included); full: adds a thread sweep and batch 32, within ~20 s. A single engine step
    cannot be cut short, so a badly overloaded machine can overrun a little.
    """

    t0 = time.perf_counter()
    # Everything below shares one deadline, so a slow or busy machine still finishes in time:
    # budgets shrink (fewer steps per point, later batch sizes skipped) instead of the run growing.
    deadline = t0 + (10.0 if quick else 20.0)
    out: dict[str, Any] = {}
    bw = memory_bandwidth(size_mb=64, seconds=0.2 if quick else 0.5)
    out["mem_bandwidth_gbs"] = bw["copy_gbs"]
    log(f"  memory bandwidth: {bw['copy_gbs']} GB/s (numpy copy)")
    try:
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    path = pull(model)  # the engine checks the GGUF itself; checking twice costs seconds
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.gguf"))), path)
    threads = max(1, min(p.usable_cores, p.cpu.big_cores()))
    load = out.get("load_avg_1m")
    if load is not None and load > 0.5 * p.usable_cores:
        out["busy"] = True
        log(f"  warning: load average {load} on {p.usable_cores} usable cores: other work is running, "
            "these numbers are pessimistic; re-run when the machine is idle")
    # The thread sweep is the full profile's; a quick one sweeps only when the machine is busy,
    # where fewer threads than cores usually wins (llama.cpp's barrier waits for preempted threads).
    sweep_threads = not quick or out.get("busy", False)
    candidates = sorted({threads, max(1, threads // 2), p.usable_cores}, reverse=True) if sweep_threads else [threads]
    batches = (1, 4, 16) if quick else (1, 4, 16, 32)
    # measured as the server runs it (a Q4_1 model split into Q4_0 + offsets, see q4_1_split)
    settings = EngineSettings(n_threads=threads, n_ctx=4096, n_seq_max=max(batches) + 1, n_batch=512,
                              split_q4_1=True)
    eng = LlamaEngine(path, settings)
    try:
        out.update(model_facts(eng))
        if len(candidates) > 1:
            # Thread sweep on one loaded model (llama_set_n_threads), at batch 4: a serving
            # step carries several tokens, where thread count and barrier costs show.
            # Fewest threads first, and one probe step before each full point: on a busy
            # machine more threads can be 100x slower (preempted threads stall every barrier),
            # and one such point would eat the whole time budget.
            sweep: dict[str, float] = {}
            fastest = None
            for n in sorted(candidates):
                set_threads(eng, n)
                step_s = probe_step_seconds(eng)
                if fastest is not None and step_s > 4 * fastest:
                    # a 4-token step stands in for a batch-4 decode step: barriers dominate both
                    sweep[str(n)] = round(4 / step_s, 1)
                    log(f"  {n} threads: one step took {step_s * 1000:.0f} ms, {step_s / fastest:.0f}x the "
                        f"{min(int(k) for k in sweep)}-thread step: skipped")
                    continue
                fastest = step_s if fastest is None else min(fastest, step_s)
                left = deadline - time.perf_counter()
                r = measure_engine(eng, batches=(4,), quick=True, budget_s=max(0.2, min(1.0, left / 4)))
                sweep[str(n)] = (r.get("batched_decode_tok_s") or {}).get("4") or 0.0
                log(f"  {n} threads: {sweep[str(n)]} tok/s at batch 4")
            out["threads_batch4_tok_s"] = sweep
            best = max(sweep.values())
            threads = min(int(k) for k, v in sweep.items() if v >= 0.97 * best)
            set_threads(eng, threads)
        out["threads"] = threads
        left = deadline - time.perf_counter()
        r = measure_engine(eng, batches=batches, quick=quick, budget_s=max(0.5, min(6.0 if quick else 10.0, left)))
        out.update(r)
        log(f"  {threads} threads: prompt {r.get('prompt_tok_s')} tok/s, decode {r.get('decode_tok_s')} tok/s, "
            f"batched {r.get('batched_decode_tok_s')}")
    finally:
        eng.close()
    out["measure_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def profile(model: str = "smollm2-135m", quick: bool = False, measure_engine: bool = True, root: str = "/",
            log=print) -> tuple[Probe, Match | None, dict[str, Any], Plan]:

    p = probe(root)
    best = best_match(p)
    entry = best.entry if best is not None and best.closeness != "weak" else None
    m: dict[str, Any] = {}
    if measure_engine:
        try:
            m = measure(p, model=model, quick=quick, log=log)
        except LiteInferError as e:  # no model, or it cannot load: plan from probe + library
            log(f"  warning: engine measurement skipped: {e}")
            m = {"error": str(e)}
    return p, best, m, plan(p, entry, m, match_info=best)
