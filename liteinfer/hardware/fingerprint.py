"""The machine's fingerprint in a planned config, and what changed since: a copied
device_config.json or a resized VM is noticed at start-up (the server warns, `doctor` advises)."""

from __future__ import annotations

from typing import Any

from liteinfer.core.config import DeviceConfig
from liteinfer.hardware.probe import Probe


def fingerprint(p: Probe) -> dict[str, Any]:
    """What makes a config stale when it changes: CPU, core count, memory, limits."""
    return {"cpu": p.cpu.model_name, "arch": p.cpu.arch, "logical_cores": p.cpu.logical_cores,
            "memory_gb": round(p.memory.total_mb / 1024), "usable_cores": p.usable_cores,
            "memory_limit_mb": p.container.memory_limit_mb}


def stale_fields(config: DeviceConfig, p: Probe) -> list[str]:
    """Fingerprint fields of `config` that differ from this machine."""
    old = config.device.get("fingerprint") or {}
    new = fingerprint(p)
    return [f"device.fingerprint.{k}: {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k]]


def not_applicable(config: DeviceConfig, p: Probe, model_bytes: int | None = None,
                   repack_safe: bool = True) -> list[str]:
    """Config fields that do not fit this machine, each as `field=value (why)`: the server
    still starts, and names them in one warning line. `repack_safe`: llama.cpp's repack
    buffers are safe with this build on this CPU (engines' repack_buffers_safe(); the
    project's AMX-off build: always)."""
    out: list[str] = []
    cores = p.usable_cores
    e = config.engine
    for name, value in (("engine.n_threads", e.n_threads), ("engine.n_threads_batch", e.n_threads_batch),
                        ("oneshot.intra_op_threads", config.oneshot.intra_op_threads)):
        if value and value > cores:
            out.append(f"{name}={value} (this machine has {cores} usable cores: threads time-share them)")
    if e.use_extra_bufts and not repack_safe:
        out.append("engine.use_extra_bufts=true (a llama.cpp build with AMX code on an AMX CPU: its repack "
                   "buffers crash multi-token decode)")
    limit = p.memory.memlock_limit_mb
    if e.use_mlock and limit is not None and (model_bytes is None or model_bytes / 2**20 > limit):
        out.append(f"engine.use_mlock=true (RLIMIT_MEMLOCK is {limit} MB: llama.cpp cannot lock the weights)")
    memory = p.effective_memory_mb
    if memory and model_bytes and model_bytes / 2**20 > memory:
        out.append(f"model={config.model} ({model_bytes / 2**20:.0f} MB of weights, {memory} MB usable here)")
    return out
