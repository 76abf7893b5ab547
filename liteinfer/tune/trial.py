"""Measure one configuration on the real engine with a real workload.

Two runners, one report. "scheduler" (the default) is the serving path: liteinfer's
ContinuousScheduler with its adaptive controller and the server's machine signals (free
memory, outside CPU load), so `scheduler.max_batch` and `prefill_chunk` are measured as the
server uses them (caps the controller chooses under). "engine" is a loop of its own for
kernel questions: up to `max_batch` sequences, prompt chunks of `prefill_chunk`, no
controller. Both do the same fixed work: every request generates exactly max_tokens
(end-of-text is banned), so configs are compared on equal work. All requests arrive at once
(a burst), so latency includes queueing. `measure_config` loads a model with a DeviceConfig
and returns plain numbers; `measure_isolated` does the same in a child process, so a config
that crashes llama.cpp costs one trial, not the tuner, and peak RSS is that trial's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.llama import LlamaEngine, SamplingParams
from liteinfer.hardware import cpufreq, meters
from liteinfer.scheduler.continuous import ContinuousScheduler, GenRequest
from liteinfer.server.metrics import Metrics
from liteinfer.tune.workload import Request, chat_mix, tokenize_requests


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_workload(engine, prompts: list[list[int]], max_tokens: list[int], max_batch: int,
                 prefill_chunk: int, on_step=None, concurrency: int | None = None) -> dict:
    """Run all prompts to exactly max_tokens each (greedy, EOS ignored); return timings.

    `concurrency`: that many clients, each sending its next request when its last one ended
    (None: every request arrives at the start). Latencies count from each request's arrival."""

    pending = deque(range(len(prompts)))
    queue: deque[int] = deque()
    active: dict[int, object] = {}  # request index -> engine Sequence
    t0 = time.perf_counter()
    cpu0 = time.process_time()  # all threads of this process
    arrived: dict[int, float] = {}
    first: dict[int, float] = {}
    done: dict[int, float] = {}

    def arrive(n: int, now: float) -> None:
        for _ in range(min(n, len(pending))):
            i = pending.popleft()
            arrived[i] = now
            queue.append(i)

    arrive(concurrency or len(prompts), 0.0)
    generated = 0
    steps = 0
    batch_sum = 0
    while queue or active:
        while queue and len(active) < max_batch and engine.free_slots > 0:
            i = queue.popleft()
            active[i] = engine.start(prompts[i], SamplingParams(max_tokens=max_tokens[i], temperature=0.0))
        plan = []
        budget_prefill = prefill_chunk
        budget = engine.n_batch
        # Decoding sequences first (one token each: they keep inter-token latency low), then
        # prompt chunks in the prefill budget that is left.
        for seq in active.values():
            if seq.n_cached >= seq.n_prompt and budget > 0:
                plan.append((seq, 1))
                budget -= 1
        for seq in active.values():
            if seq.n_cached < seq.n_prompt and budget > 0 and budget_prefill > 0:
                k = min(seq.n_pending, budget, budget_prefill)
                plan.append((seq, k))
                budget -= k
                budget_prefill -= k
        results = engine.step(plan)
        steps += 1
        batch_sum += len(plan)
        now = time.perf_counter() - t0
        for seq, _tok in results:
            i = next(j for j, s in active.items() if s is seq)
            first.setdefault(i, now)
            generated += 1
            if len(seq.generated) >= max_tokens[i]:
                done[i] = now
                engine.release(seq)
                del active[i]
                arrive(1, now)  # that client's next request
        if on_step:
            on_step()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ttft = [(first[i] - arrived[i]) * 1000 for i in sorted(first)]
    lat = [(done[i] - arrived[i]) * 1000 for i in sorted(done)]
    itl = [(done[i] - first[i]) * 1000 / max(1, max_tokens[i] - 1) for i in done]
    return _report(prompts, generated, wall, cpu, steps, ttft, lat, itl, batch_sum)


def _report(prompts: list[list[int]], generated: int, wall: float, cpu: float, steps: int,
            ttft: list[float], lat: list[float], itl: list[float], batch_sum: int) -> dict:
    """The numbers a trial reports, the same for the engine loop and the scheduler path."""
    n_prompt = sum(len(p) for p in prompts)
    return {
        "requests": len(prompts),
        "prompt_tokens": n_prompt,
        "generated_tokens": generated,
        "seconds": wall,
        "steps": steps,
        "mean_batch": batch_sum / steps if steps else 0.0,  # sequences advanced per engine step
        "tok_s": generated / wall if wall > 0 else 0.0,
        "cpu_s": cpu,
        # Generated tokens per CPU-second: far less sensitive than tok/s to other processes
        # taking turns on the cores (with 1 thread it approximates tok/s on a quiet core).
        "tok_per_cpu_s": generated / cpu if cpu > 0 else 0.0,
        "total_tok_s": (generated + n_prompt) / wall if wall > 0 else 0.0,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "latency_p50_ms": percentile(lat, 50),
        "latency_p95_ms": percentile(lat, 95),
        "latency_p99_ms": percentile(lat, 99),
        "itl_mean_ms": sum(itl) / len(itl) if itl else float("nan"),
        "ttft_ms": ttft,  # per request, for plots (the tuner keeps only the numbers above)
        "latency_ms": lat,
    }


class _End:
    """A request's emit callback that only notes when it finished (and any error)."""

    def __init__(self) -> None:
        self.at, self.error = None, None

    def __call__(self, ev) -> None:
        if ev.kind in ("done", "error"):
            self.at = time.monotonic()
            self.error = ev.text if ev.kind == "error" else None


def end_of_text_tokens(engine) -> list[int]:
    """Every token that ends a generation (EOS, <|im_end|>, ...): banned for fixed work."""
    return [t for t in range(engine.n_vocab) if engine.is_eog(t)]


def run_scheduler_workload(engine, prompts: list[list[int]], max_tokens: list[int], settings,
                           on_step=None, concurrency: int | None = None) -> dict:
    """The same workload through the serving path: liteinfer's ContinuousScheduler (admission,
    chunked prefill, the adaptive controller fed the server's machine signals), stepped on
    this thread. End-of-text is banned (a logit bias, as a client may send), so every request
    generates exactly max_tokens, the same work as the engine runner. `concurrency` as in
    run_workload."""

    banned = {t: -100.0 for t in end_of_text_tokens(engine)}
    metrics = Metrics()  # the server's: machine signals for the controller, sequences per step
    sched = ContinuousScheduler(engine, settings, max_queue=len(prompts) + 1, metrics=metrics)
    pending = deque(zip(prompts, max_tokens, strict=True))
    reqs: list[GenRequest] = []
    ends: list[_End] = []

    def send(n: int) -> None:
        for _ in range(min(n, len(pending))):
            p, mt = pending.popleft()
            end = _End()
            req = GenRequest(p, SamplingParams(max_tokens=mt, temperature=0.0, logit_bias=dict(banned)), end)
            sched.submit(req)
            reqs.append(req)
            ends.append(end)

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    send(concurrency or len(prompts))
    n_done = 0
    while sched.waiting or sched.running:
        sched.step()
        finished = sum(e.at is not None for e in ends)
        send(finished - n_done)  # each finished client sends its next request
        n_done = finished
        if on_step:
            on_step()
    errors = [e.error for e in ends if e.error]
    if errors:
        raise LiteInferError(f"scheduler: {errors[0]}")
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    generated = sum(r.completion_tokens for r in reqs)
    started = [(r, e) for r, e in zip(reqs, ends, strict=True) if r.first_token is not None]
    ttft = [(r.first_token - r.arrived) * 1000 for r, _ in started]
    lat = [(e.at - r.arrived) * 1000 for r, e in zip(reqs, ends, strict=True)]
    itl = [(e.at - r.first_token) * 1000 / max(1, r.completion_tokens - 1) for r, e in started]
    (hist,) = metrics.seqs_per_step.collect()
    batch_sum = next(x.value for x in hist.samples if x.name.endswith("_sum"))
    return _report(prompts, generated, wall, cpu, sched.steps, ttft, lat, itl, int(batch_sum))


RUNNERS = ("scheduler", "engine")


def _rss_mb() -> float:
    # on use: psutil is heavy (start-up, memory)
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_config(model: str | os.PathLike, cfg: DeviceConfig, requests: list[Request] | None = None,
                   warmup: bool = True, sys_root: str = "/sys", region=None, runner: str = "scheduler",
                   sweep: list[int] | None = None) -> dict:
    """Load `model` with cfg.engine, run the workload with cfg.scheduler limits; return metrics.

    Energy (joules, J/token, watts) comes from the first energy meter found, else None.
    Applies cfg.power.profile first when it is a cpufreq profile and we may change it.
    `region`: a context manager entered around the measured run only (bench --perf uses it
    to switch perf counters on after model load and warm-up). `runner`: "scheduler" (the
    serving path) or "engine" (the engine-only loop); both generate exactly max_tokens.
    `sweep`: after the main run (every request at once), the same workload again from that
    many clients each (closed loop, prefix cache emptied first): m["sweep"], one report per
    level, for throughput against concurrency. Energy and `region` cover the main run only.
    """
    if runner not in RUNNERS:
        raise LiteInferError(f"unknown runner {runner!r}; choose {' or '.join(RUNNERS)}")

    requests = requests or chat_mix()
    power_note = None
    if cfg.power.profile not in ("unchanged", "dynamic"):
        try:
            cpufreq.set_profile(cfg.power.profile, sys_root)
        except LiteInferError as e:
            power_note = str(e)
    t_load = time.perf_counter()
    engine = LlamaEngine(model, cfg.engine)
    load_s = time.perf_counter() - t_load
    engine.prefix_cache = cfg.scheduler.prefix_cache
    try:
        prompts = tokenize_requests(engine, requests)
        max_tokens = [r.max_tokens for r in requests]
        if warmup:  # first decodes allocate compute buffers and fault in the weights
            seq = engine.start(prompts[0][:8], SamplingParams(temperature=0.0))
            engine.step([(seq, seq.n_pending)])
            engine.step([(seq, 1)])
            engine.release(seq, keep_prefix=False)
        peak = [_rss_mb()]
        meter = meters.default_meter(sys_root)
        if meter:
            meter.start()
        counter = [0]

        def on_step() -> None:
            counter[0] += 1
            if counter[0] % 8 == 0:
                peak[0] = max(peak[0], _rss_mb())
                if hasattr(meter, "sample"):  # fold RAPL wraps on long runs
                    meter.sample()

        def run(concurrency: int | None) -> dict:
            if runner == "scheduler":
                return run_scheduler_workload(engine, prompts, max_tokens, cfg.scheduler, on_step=on_step,
                                              concurrency=concurrency)
            return run_workload(engine, prompts, max_tokens, cfg.scheduler.max_batch, cfg.scheduler.prefill_chunk,
                                on_step=on_step, concurrency=concurrency)

        with region() if region else contextlib.nullcontext():
            m = run(None)
            reading = meter.stop() if meter else None
        m["concurrency"] = len(prompts)
        levels = []
        for c in sweep or []:
            engine.clear_prefix_cache()  # each level starts as cold as the main run did
            levels.append({**run(c), "concurrency": c})
        if sweep:
            m["sweep"] = levels
        peak[0] = max(peak[0], _rss_mb())
    finally:
        engine.close()
    m.update(
        load_s=load_s,
        rss_peak_mb=peak[0],
        threads=engine.n_threads,
        meter=meter.name if meter else None,
        joules=reading.joules if reading else None,
        watts=reading.watts if reading else None,
        j_per_token=reading.joules / m["generated_tokens"] if reading and m["generated_tokens"] else None,
        loadavg_1m=os.getloadavg()[0],
        cpus=os.cpu_count(),
        power_note=power_note,
        runner=runner,
    )
    return m


def measure_isolated(model: str | os.PathLike, cfg: DeviceConfig, requests: list[Request] | None = None,
                     timeout_s: float = 600, runner: str = "scheduler") -> dict:
    """measure_config in a child process; a crash or timeout raises LiteInferError."""
    payload = json.dumps({
        "model": str(model),
        "config": cfg.model_dump(mode="json"),
        "requests": [asdict(r) for r in (requests or chat_mix())],
        "runner": runner,
    })
    try:
        out = subprocess.run([sys.executable, "-m", "liteinfer.tune.trial"], input=payload, capture_output=True,
                             text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        raise LiteInferError(f"trial timed out after {timeout_s:.0f} s") from None
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LiteInferError(f"trial failed (exit {out.returncode}): {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child() -> int:
    d = json.loads(sys.stdin.read())
    cfg = DeviceConfig.model_validate(d["config"])
    m = measure_config(d["model"], cfg, [Request(**r) for r in d["requests"]], runner=d.get("runner", "scheduler"))
    m["rss_peak_mb"] = max(m["rss_peak_mb"], _peak_rss_mb())  # the whole process, this trial only
    print(json.dumps(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
