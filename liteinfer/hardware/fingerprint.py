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
