"""What `liteinfer doctor --server` reads beside the serving metrics: the limits the load is
measured against (queue limit, TTFT / ITL targets, KV cells), KV-full preemptions, and the
machine signals that slow a server from outside (other processes' CPU, hypervisor steal,
the cgroup quota's throttling, clock and temperature where the kernel exposes them). Read when /metrics is rendered.
A signal the machine does not expose is left out, never reported as 0.
"""

from __future__ import annotations

from pathlib import Path

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class LoadSignals:
    def __init__(self, metrics, scheduler) -> None:
        """`scheduler`: a callable returning the LLM's ContinuousScheduler, or None without one."""
        self.metrics, self.scheduler = metrics, scheduler
        self._times = self._cpu_times()

    @staticmethod
    def _cpu_times():
        try:
            return psutil.cpu_times()
        except Exception:  # a platform without it: no steal reading
            return None

    def _steal(self) -> float | None:
        now, before = self._cpu_times(), self._times
        self._times = now
        if now is None or before is None or not hasattr(now, "steal"):
            return None
        total = sum(now) - sum(before)
        return max(0.0, (now.steal - before.steal) / total) if total > 0 else None

    @staticmethod
    def _freq_ratio() -> float | None:
        try:
            f = psutil.cpu_freq()
        except Exception:  # no cpufreq (VMs, containers)
            return None
        return f.current / f.max if f and f.max else None

    @staticmethod
    def _throttled_seconds(root: str = "/sys/fs/cgroup") -> float | None:
        """Time the cgroup's CPU quota has held this server's cgroup back (cgroup v2 or v1)."""
        for path, key, scale in ((Path(root, "cpu.stat"), "throttled_usec", 1e-6),
                                 (Path(root, "cpu", "cpu.stat"), "throttled_time", 1e-9)):
            try:
                text = path.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value) * scale
        return None

    @staticmethod
    def _temperature() -> float | None:
        try:
            temps = psutil.sensors_temperatures()
        except Exception:  # not on this platform
            return None
        values = [t.current for zone in temps.values() for t in zone if t.current]
        return max(values) if values else None

    def collect(self):
        m = self.metrics
        g = GaugeMetricFamily
        yield g("liteinfer_outside_cpu_load", "busy cores outside this server / all cores", value=m.outside_cpu_load)
        yield g("liteinfer_free_memory_fraction", "available / total memory", value=m.free_memory_fraction)
        for name, doc, value in (
            ("liteinfer_cpu_steal_fraction", "CPU time the hypervisor gave to others since the last scrape",
             self._steal()),
            ("liteinfer_cpu_frequency_ratio", "current / max CPU clock (below 1 under throttling or powersave)",
             self._freq_ratio()),
            ("liteinfer_cpu_temperature_celsius", "hottest temperature sensor", self._temperature()),
        ):
            if value is not None:
                yield g(name, doc, value=value)
        throttled = self._throttled_seconds()
        if throttled is not None:
            yield CounterMetricFamily("liteinfer_cgroup_throttled_seconds", "time the cgroup's CPU quota held "
                                      "this server back (cpu.stat)", value=throttled)
        s = self.scheduler()
        if s is None:
            return
        yield g("liteinfer_queue_limit", "server.max_queue: requests that may wait beyond a full batch",
                value=s.max_queue)
        yield g("liteinfer_target_ttft_seconds", "scheduler.target_ttft_ms", value=s.settings.target_ttft_ms / 1000)
        yield g("liteinfer_target_itl_seconds", "scheduler.target_itl_ms", value=s.settings.target_itl_ms / 1000)
        yield g("liteinfer_kv_cells_total", "KV cells (engine.n_ctx)", value=getattr(s.engine, "n_ctx", s.engine.settings.n_ctx))
        yield CounterMetricFamily("liteinfer_kv_preemptions", "requests pushed back to the queue because the KV "
                                  "cache was full", value=s.preemptions)
