"""Every Prometheus metric the server exports, and the live machine signals the controller reads.

One registry per app (tests start several). The LLM scheduler calls `observe_step` after every
engine step; memory and outside-CPU-load readings are refreshed at most every half second.
`watch_oneshot(svc)` adds a one-shot model's batcher (labelled by model name); `watch_power(p)`
the energy meter and the CPU power policy (server/power.py), read when /metrics is rendered.
"""

from __future__ import annotations

import math
import os
import time

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from liteinfer.scheduler.cpu_share import COMPUTE_SHARE

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
ONESHOT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ONESHOT_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("liteinfer_queue_depth", "requests waiting for a slot", registry=r)
        self.active = Gauge("liteinfer_active_sequences", "sequences in the running batch", registry=r)
        self.seqs_per_step = Histogram("liteinfer_sequences_per_step", "sequences advanced per engine step",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.step_latency = Histogram("liteinfer_step_seconds", "engine step latency", buckets=LATENCY_BUCKETS,
                                      registry=r)
        self.ttft = Histogram("liteinfer_time_to_first_token_seconds", "arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.request_latency = Histogram("liteinfer_request_seconds", "arrival to last token",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("liteinfer_generated_tokens", "completion tokens", registry=r)
        self.prompt_tokens = Counter("liteinfer_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.reused_tokens = Counter("liteinfer_prefix_reused_tokens", "prompt tokens served from the prefix cache",
                                     registry=r)
        self.speculative_drafted = Counter("liteinfer_speculative_drafted_tokens",
                                           "prompt-lookup draft tokens run in engine steps", registry=r)
        self.speculative_accepted = Counter("liteinfer_speculative_accepted_tokens",
                                            "draft tokens the model sampled itself (kept)", registry=r)
        self.rejected = Counter("liteinfer_rejected_requests", "requests turned away", ["reason"], registry=r)
        self.cancelled = Counter("liteinfer_cancelled_requests", "requests cancelled (client gone)", registry=r)
        self.rss = Gauge("liteinfer_resident_memory_bytes", "server resident memory", registry=r)
        self.kv_cells = Gauge("liteinfer_kv_cells_used", "KV cells held (active + cached prefixes)", registry=r)
        self.max_batch = Gauge("liteinfer_controller_max_batch", "controller: sequences allowed per step",
                               registry=r)
        self.prefill_chunk = Gauge("liteinfer_controller_prefill_chunk", "controller: prompt tokens per step",
                                   registry=r)
        self.threads = Gauge("liteinfer_engine_threads", "llama.cpp compute threads in use", registry=r)
        self.speech_pause = Gauge("liteinfer_llm_paused_for_speech_seconds",
                                  "total time LLM steps waited while speech jobs held every core", registry=r)
        self.speech_pause.set_function(lambda: COMPUTE_SHARE.paused_s)
        per_model = {"registry": r, "labelnames": ["model"]}
        self.oneshot_batch = Histogram("liteinfer_oneshot_batch_size", "inputs per one-shot batch",
                                       buckets=ONESHOT_BATCH_BUCKETS, **per_model)
        self.oneshot_seconds = Histogram("liteinfer_oneshot_batch_seconds", "model time per one-shot batch",
                                         buckets=ONESHOT_SECONDS_BUCKETS, **per_model)
        self.oneshot_queue = Gauge("liteinfer_oneshot_queue_depth", "inputs waiting", **per_model)
        self.oneshot_max_batch = Gauge("liteinfer_oneshot_max_batch", "current batch limit", **per_model)
        self.oneshot_delay = Gauge("liteinfer_oneshot_max_delay_seconds", "current batch hold limit", **per_model)
        self._proc = psutil.Process(os.getpid())
        self._last_sample = 0.0
        self.free_memory_fraction = 1.0
        self.outside_cpu_load = 0.0
        self.cpu_samples = 0  # fresh outside-load readings so far: the controller votes once per reading
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)

    def sample_machine(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_sample < 0.5 and not force:
            return
        stale = now - self._last_sample > 2.0
        self._last_sample = now
        vm = psutil.virtual_memory()
        self.free_memory_fraction = vm.available / vm.total
        ncpu = psutil.cpu_count() or 1
        total = psutil.cpu_percent(None) / 100 * ncpu  # busy cores, whole machine
        ours = self._proc.cpu_percent(None) / 100  # busy cores, this process
        if stale:  # after an idle spell the reading spans it (other programs' bursts): start over
            self.outside_cpu_load = 0.0
        else:
            self.outside_cpu_load = max(0.0, min(1.0, (total - ours) / ncpu))
            self.cpu_samples += 1
        self.rss.set(self._proc.memory_info().rss)

    def observe_step(self, n_seqs: int, n_decode: int, n_prompt: int, seconds: float, scheduler) -> None:
        self.seqs_per_step.observe(n_seqs)
        self.step_latency.observe(seconds)
        self.queue_depth.set(scheduler.queue_depth)
        self.active.set(len(scheduler.running))
        self.kv_cells.set(scheduler.engine.cells_used)
        d = scheduler.controller.decision
        self.max_batch.set(d.max_batch)
        self.prefill_chunk.set(d.prefill_chunk)
        self.threads.set(scheduler.engine.n_threads)
        self.sample_machine()

    def watch_oneshot(self, svc) -> None:
        """Batch size / time histograms and live queue and controller gauges for a one-shot model."""
        b = svc.batcher
        self.oneshot_queue.labels(svc.name).set_function(lambda: b.queue_depth)
        self.oneshot_max_batch.labels(svc.name).set_function(lambda: b.max_batch)
        self.oneshot_delay.labels(svc.name).set_function(lambda: b.max_delay_s)
        hist_n, hist_s = self.oneshot_batch.labels(svc.name), self.oneshot_seconds.labels(svc.name)

        def on_batch(rec) -> None:
            hist_n.observe(rec.size)
            hist_s.observe(rec.run_s)

        b.on_batch = on_batch

    def watch_power(self, power) -> None:
        """Energy (joules, average watts, joules per generated token) and the power policy."""
        self.registry.register(_PowerCollector(power, self.generated_tokens))

    def render(self, scheduler=None) -> bytes:
        self.sample_machine(force=True)
        if scheduler is not None:
            self.queue_depth.set(scheduler.queue_depth)
            self.active.set(len(scheduler.running))
            self.kv_cells.set(scheduler.engine.cells_used)
        return generate_latest(self.registry)


class _PowerCollector:
    """Reads the server's ServerPower at scrape time. Without a meter only the info line, with
    meter="unavailable" and the reasons; no zeros that would read as measurements."""

    def __init__(self, power, generated_tokens: Counter) -> None:
        self.power, self.generated_tokens = power, generated_tokens

    def _tokens(self) -> float:
        for metric in self.generated_tokens.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    return sample.value
        return 0.0

    def collect(self):
        p = self.power
        p.poll()
        if p.meter is None:
            yield InfoMetricFamily("liteinfer_energy_meter", "energy meter (RAPL, hwmon, NVML, Pi PMIC)",
                                   value={"meter": "unavailable", "reason": p.meter_note})
        else:
            yield InfoMetricFamily("liteinfer_energy_meter", "energy meter (RAPL, hwmon, NVML, Pi PMIC)",
                                   value={"meter": p.meter.name})
            yield CounterMetricFamily("liteinfer_energy_joules", "energy the meter counted since the server "
                                      "started (its whole domain: CPU package, board or GPU)", value=p.joules)
            yield CounterMetricFamily("liteinfer_energy_busy_joules", "the part of it while the engine worked",
                                      value=p.busy_joules)
            yield GaugeMetricFamily("liteinfer_power_average_watts", "average power since the server started",
                                    value=p.joules / p.seconds if p.seconds > 0 else math.nan)
            tokens = self._tokens()
            yield GaugeMetricFamily("liteinfer_energy_joules_per_token", "busy joules per generated token "
                                    "(NaN before the first token)", value=p.busy_joules / tokens if tokens else math.nan)
        info = {"profile": p.settings.profile, "state": p.state}
        if p.note:
            info["reason"] = p.note
        yield InfoMetricFamily("liteinfer_power_profile", "power.profile and whether it applies here", value=info)
        if p.controller is not None:
            yield GaugeMetricFamily("liteinfer_power_level", "dynamic policy: 1 high clock, 0 low",
                                    value=1.0 if p.level == "high" else 0.0)
            yield CounterMetricFamily("liteinfer_power_switches", "dynamic policy: profile changes applied",
                                      value=p.controller.switches)
