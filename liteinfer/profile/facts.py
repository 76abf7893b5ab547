"""The facts a tip's condition may name: this machine (probe), its config, the model's
metadata and a running server's live metrics.

`FACTS` is the whole vocabulary: a tip that names anything else is refused when the tip base
loads (`liteinfer/profile/tips.py`). `gather()` computes the values; a fact whose source was
not given (no model file, no `--server`) is MISSING, and a tip that needs it does not apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from liteinfer.core.config import DeviceConfig
from liteinfer.core.gguf_header import read_header
from liteinfer.hardware.devices import best_match
from liteinfer.hardware.probe import Probe


class _Missing:
    """A fact whose source is absent (no model, no live server): not the same as None."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class Fact:
    source: str  # probe | config | model | live
    doc: str


def _f(source: str, doc: str) -> Fact:
    return Fact(source, doc)


_PROBE = {
    "os": "operating system: linux, darwin",
    "board": "device-tree model or DMI product name ('' when unknown)",
    "board_compatible": "device-tree compatible strings (list)",
    "cloud": "cloud provider from DMI: aws, gcp, azure, ... ('' on bare metal)",
    "device.id": "the device library entry that matched ('' when the match is weak)",
    "device.family": "its family: raspberry-pi, rockchip, jetson, apple, intel-mini, amd-mini, x86-server, cloud",
    "device.closeness": "exact, close, similar or weak",
    "cpu.arch": "x86_64, aarch64, arm64, armv7l, ...",
    "cpu.vendor": "CPU vendor string (GenuineIntel, AuthenticAMD, ARM, Apple)",
    "cpu.model": "CPU model name",
    "cpu.isa": "ISA features in the probe's names (list): avx2, avx512, avx512_vnni, amx, neon, dotprod, i8mm, ...",
    "cpu.physical_cores": "physical cores",
    "cpu.logical_cores": "logical CPUs",
    "cpu.smt": "hyperthreads present",
    "cpu.big_little": "cores of different kinds (big.LITTLE, P/E cores)",
    "cpu.big_count": "number of the biggest cores (all cores when uniform)",
    "cpu.big_cpus": "CPU ids of the biggest cores, comma-separated (for taskset -c)",
    "cpu.core_names": "core names (list): Cortex-A76, Cortex-A55, ...",
    "cpu.hypervisor": "running under a hypervisor (VM)",
    "cpu.l2_kb": "L2 size of one instance, KB (0 unknown)",
    "cpu.l3_kb": "L3 size of one instance, KB (0 unknown / none)",
    "cpu.max_mhz": "highest max clock of any cluster, MHz (None unknown)",
    "usable_cores": "cores liteinfer may use (affinity, cgroup quota, SMT siblings not counted)",
    "usable_cores_half": "half the usable cores, at least 1 (a share for a second engine)",
    "mem.total_mb": "RAM, MB",
    "mem.available_mb": "MemAvailable, MB",
    "mem.swap_mb": "swap, MB",
    "mem.memlock_mb": "RLIMIT_MEMLOCK, MB (None = unlimited or unknown)",
    "mem.effective_mb": "memory liteinfer may use (available, or the cgroup limit)",
    "container.inside": "inside a container",
    "container.cgroup_version": "1 or 2 (None outside cgroups)",
    "container.cpu_quota": "CPUs allowed by the cgroup quota (None = unlimited)",
    "container.cpu_quota_int": "the quota rounded down to whole CPUs, at least 1 (None = unlimited)",
    "container.memory_limit_mb": "cgroup memory limit, MB (None = unlimited)",
    "accel.apis": "APIs of compute accelerators found (list): cuda, metal, vulkan, rknn, hailort, edgetpu, openvino",
    "accel.kinds": "kinds of compute accelerators (list): gpu, igpu, npu, tpu",
    "power.cpufreq": "cpufreq interface present",
    "power.governor": "current cpufreq governor",
    "power.governors": "available governors (list)",
    "power.driver": "cpufreq scaling driver (intel_pstate, amd-pstate-epp, cpufreq-dt, ...)",
    "power.energy_meter": "an energy meter exists (RAPL, hwmon power, vcgencmd, tegrastats, powermetrics)",
    "power.battery": "a battery is present",
    "power.tools": "power tools found (list): vcgencmd, nvpmodel, tegrastats, jetson_clocks, powermetrics",
    "power.thermal_zones": "number of thermal zones",
    "power.rapl": "RAPL domains present",
    "numa.nodes": "NUMA nodes (None when the machine does not say)",
    "storage.kinds": "block device kinds present (list): mmc, nvme, scsi, virtio, zram",
    "load.avg1": "1-minute load average (None on a recorded fixture tree)",
}
_MODEL = {
    "model.arch": "general.architecture (llama, qwen2, gemma2, phi3, ...)",
    "model.file_type": "dominant type of the 2-D weights: q4_0, q4_1, q4_k, q8_0, f16, ...",
    "model.size_mb": "file size, MB",
    "model.params_m": "parameters, millions",
    "model.n_layers": "transformer blocks",
    "model.n_embd": "hidden width",
    "model.n_head_kv": "KV heads",
    "model.n_ctx_train": "training context length",
    "model.kv_kb_per_token": "KV cache per token in f16, KB",
    "model.kv_mb": "the config's KV cache (n_ctx cells at its type_k/type_v), MB",
    "model.rows_256": "every weight row width is a multiple of 256 (k-quants possible)",
    "model.memory_fraction": "weights + KV cache as a fraction of usable memory",
}
_LIVE = {
    "live.window_s": "seconds the server's /metrics were watched",
    "live.requests": "requests finished in the window",
    "live.rejected_queue_full": "requests refused with 429 queue_full in the window",
    "live.queue_full_fraction": "share of samples with the queue at its limit, or of requests refused",
    "live.queue_depth_max": "most requests waiting at any sample",
    "live.ttft_p95_ms": "time to first token, p95 over the window (None without requests)",
    "live.target_ttft_ms": "the server's TTFT target",
    "live.step_p95_ms": "engine step time, p95 over the window",
    "live.target_itl_ms": "the server's inter-token latency target",
    "live.preemptions": "KV-full preemptions in the window",
    "live.kv_fill": "KV cells in use / n_ctx, highest sample",
    "live.outside_cpu_load": "busy cores outside the server / all cores, mean of the samples",
    "live.cgroup_throttled_s": "seconds the cgroup's CPU quota held the server back in the window (None when not measured)",
    "live.cpu_steal": "CPU time stolen by the hypervisor, fraction, mean of the samples (None when not measured)",
    "live.cpu_freq_ratio": "current / max CPU clock, lowest sample (None when not measured)",
    "live.temperature_c": "hottest thermal zone, highest sample (None when not measured)",
    "live.free_memory_fraction": "available / total memory, lowest sample",
    "live.threads": "llama.cpp compute threads at the end of the window",
    "live.seqs_per_step": "mean sequences per engine step",
    "live.prefix_reuse": "prompt tokens served from the prefix cache / prompt tokens",
    "live.tok_s": "generated tokens per second over the window",
    "live.oneshot_queue_max": "most one-shot inputs waiting at any sample (0 without one-shot models)",
}

FACTS: dict[str, Fact] = {
    **{k: _f("probe", v) for k, v in _PROBE.items()},
    **{k: _f("model", v) for k, v in _MODEL.items()},
    **{k: _f("live", v) for k, v in _LIVE.items()},
    "config.present": _f("config", "a device_config.json was found (else the defaults are checked)"),
}


def _config_fields() -> dict[str, str]:
    out = {"config.model": "the LLM the config serves", "config.embedding_model": "embedding model",
           "config.classifier_model": "classifier model"}
    for section, info in DeviceConfig.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            for name, f in sub.model_fields.items():
                out[f"config.{section}.{name}"] = f.description or f"{section}.{name}"
    return out


FACTS.update({k: _f("config", v) for k, v in _config_fields().items()})


# --- gathering ----------------------------------------------------------------------------


def probe_facts(p: Probe) -> dict[str, Any]:
    c, m, ct, pw = p.cpu, p.memory, p.container, p.power
    big = max(c.clusters, key=lambda k: (k.capacity or 0, k.max_freq_mhz or 0)) if c.clusters else None
    best = best_match(p)
    root = Path(p.root)
    accs = p.compute_accelerators()
    return {
        "os": p.os, "board": p.board, "board_compatible": list(p.compatible), "cloud": p.cloud,
        "device.id": best.entry.id if best and best.closeness != "weak" else "",
        "device.family": best.entry.family if best and best.closeness != "weak" else "",
        "device.closeness": best.closeness if best else "weak",
        "cpu.arch": c.arch, "cpu.vendor": c.vendor, "cpu.model": c.model_name, "cpu.isa": list(c.isa),
        "cpu.physical_cores": c.physical_cores, "cpu.logical_cores": c.logical_cores, "cpu.smt": c.smt,
        "cpu.big_little": c.big_little,
        "cpu.big_count": len(big.cpus) if big and c.big_little else c.physical_cores,
        "cpu.big_cpus": ",".join(str(i) for i in big.cpus) if big and c.big_little
        else ",".join(str(i) for k in c.clusters for i in k.cpus),
        "cpu.core_names": sorted({k.core for k in c.clusters if k.core}),
        "cpu.hypervisor": c.hypervisor, "cpu.l2_kb": c.cache_kb(2), "cpu.l3_kb": c.cache_kb(3),
        "cpu.max_mhz": max((k.max_freq_mhz for k in c.clusters if k.max_freq_mhz), default=None),
        "usable_cores": p.usable_cores,
        "usable_cores_half": max(1, p.usable_cores // 2),
        "mem.total_mb": m.total_mb, "mem.available_mb": m.available_mb, "mem.swap_mb": m.swap_total_mb,
        "mem.memlock_mb": m.memlock_limit_mb, "mem.effective_mb": p.effective_memory_mb,
        "container.inside": ct.in_container, "container.cgroup_version": ct.cgroup_version,
        "container.cpu_quota": ct.cpu_quota,
        "container.cpu_quota_int": None if ct.cpu_quota is None else max(1, int(ct.cpu_quota)),
        "container.memory_limit_mb": ct.memory_limit_mb,
        "accel.apis": sorted({a.api for a in accs if a.api}), "accel.kinds": sorted({a.kind for a in accs}),
        "power.cpufreq": pw.cpufreq, "power.governor": pw.governor, "power.governors": list(pw.governors),
        "power.driver": pw.scaling_driver, "power.energy_meter": pw.energy_meter, "power.battery": pw.battery,
        "power.tools": list(pw.tools), "power.thermal_zones": len(pw.thermal_zones),
        "power.rapl": bool(pw.rapl_domains),
        "numa.nodes": _numa_nodes(root), "storage.kinds": _storage_kinds(root),
        "load.avg1": _load_avg() if str(root) == "/" else None,
    }


def _numa_nodes(root: Path) -> int | None:
    d = root / "sys/devices/system/node"
    nodes = [n for n in d.glob("node[0-9]*")] if d.is_dir() else []
    return len(nodes) or None


def _storage_kinds(root: Path) -> list[str]:
    d = root / "sys/block"
    kinds = set()
    for dev in (d.iterdir() if d.is_dir() else ()):
        n = dev.name
        for prefix, kind in (("mmcblk", "mmc"), ("nvme", "nvme"), ("sd", "scsi"), ("vd", "virtio"),
                             ("zram", "zram"), ("xvd", "virtio")):
            if n.startswith(prefix):
                kinds.add(kind)
    return sorted(kinds)


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def config_facts(cfg: DeviceConfig | None) -> dict[str, Any]:
    present = cfg is not None
    cfg = cfg or DeviceConfig()
    out: dict[str, Any] = {"config.present": present, "config.model": cfg.model,
                           "config.embedding_model": cfg.embedding_model,
                           "config.classifier_model": cfg.classifier_model}
    for section in DeviceConfig.model_fields:
        value = getattr(cfg, section)
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                out[f"config.{section}.{name}"] = getattr(value, name)
    return out


# bytes per element of a KV cache type (block types: bytes per block / weights per block)
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
            "q5_0": 22 / 32, "q5_1": 24 / 32}


def model_facts(path: str | os.PathLike, cfg: DeviceConfig | None, effective_mb: int) -> dict[str, Any]:
    """Facts from a GGUF's header (no weights are read)."""
    cfg = cfg or DeviceConfig()
    h = read_header(path)
    md = h.metadata
    arch = str(md.get("general.architecture", ""))

    def meta(key: str, default=0):
        v = md.get(f"{arch}.{key}", default)
        return v if isinstance(v, (int, float)) else default

    n_layers, n_embd = int(meta("block_count")), int(meta("embedding_length"))
    n_head = int(meta("attention.head_count", 1)) or 1
    n_head_kv = int(meta("attention.head_count_kv", n_head)) or n_head
    head_k = int(meta("attention.key_length", n_embd // n_head if n_head else 0))
    head_v = int(meta("attention.value_length", head_k))
    weights = [t for t in h.tensors if len(t.shape) >= 2 and t.n_elements >= 1 << 16]
    by_type: dict[str, int] = {}
    for t in weights:
        by_type[t.type_name] = by_type.get(t.type_name, 0) + t.n_bytes
    size_mb = Path(path).stat().st_size / 2**20
    kv_per_token_f16 = n_layers * n_head_kv * (head_k + head_v) * 2  # bytes
    e = cfg.engine
    kv_mb = cfg.engine.n_ctx * n_layers * n_head_kv * (head_k * KV_BYTES.get(e.type_k, 2.0)
                                                        + head_v * KV_BYTES.get(e.type_v, 2.0)) / 2**20
    return {
        "model.arch": arch,
        "model.file_type": max(by_type, key=by_type.get) if by_type else "",
        "model.size_mb": round(size_mb, 1),
        "model.params_m": round(sum(t.n_elements for t in h.tensors) / 1e6, 1),
        "model.n_layers": n_layers, "model.n_embd": n_embd, "model.n_head_kv": n_head_kv,
        "model.n_ctx_train": int(meta("context_length")),
        "model.kv_kb_per_token": round(kv_per_token_f16 / 1024, 1),
        "model.kv_mb": round(kv_mb, 1),
        "model.rows_256": all(t.shape[0] % 256 == 0 for t in weights),
        "model.memory_fraction": round((size_mb + kv_mb) / max(1, effective_mb), 3),
    }


def missing(source: str) -> dict[str, Any]:
    return {k: MISSING for k, f in FACTS.items() if f.source == source}


__all__ = ["FACTS", "MISSING", "Fact", "config_facts", "missing", "model_facts", "probe_facts"]
