"""The device library: one JSON file per device under hardware/devices/, and matching a Probe to it.

An entry holds what is published about a device (cores, memory, bandwidth, power, accelerators,
with the sources the numbers come from) and the settings we recommend for it. The planner
uses an entry to fill in what a short probe cannot see (peak bandwidth, TDP, an NPU whose
driver is not loaded) and to cross-check what it measured.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from liteinfer.core.config import KVType
from liteinfer.core.errors import LiteInferError
from liteinfer.hardware.probe import Probe

DEVICES_DIR = Path(__file__).parent / "devices"
Family = Literal["raspberry-pi", "rockchip", "jetson", "apple", "intel-mini", "amd-mini", "x86-server", "cloud"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatchRules(_Strict):
    """How to recognise the device. Patterns are case-insensitive regular expressions."""

    board: list[str] = Field(default_factory=list, description="device-tree model / DMI product")
    compatible: list[str] = Field(default_factory=list, description="device-tree compatible strings")
    cpu_model: list[str] = Field(default_factory=list, description="/proc/cpuinfo model name or core list")
    cloud: str | None = None  # aws, gcp, azure, hetzner... from DMI
    virtual: bool | None = None  # True: a VM (hypervisor flag); False: bare metal


class ClusterSpec(_Strict):
    core: str
    count: int = Field(ge=1)
    max_mhz: int | None = None
    threads_per_core: int = Field(1, ge=1, le=4)


class CpuSpec(_Strict):
    arch: Literal["x86_64", "aarch64", "arm64"]
    soc: str  # "Broadcom BCM2712", "Intel Processor N100"
    cores: int = Field(ge=1)
    threads: int = Field(ge=1)
    clusters: list[ClusterSpec] = Field(min_length=1)
    isa: list[str]


class MemorySpec(_Strict):
    gb: float = Field(gt=0)
    type: str  # "LPDDR4X-4267"
    bus_bits: int | None = Field(None, ge=16)
    bandwidth_gbs: float | None = Field(None, gt=0, description="theoretical peak (transfer rate x bus width)")


class AcceleratorSpec(_Strict):
    kind: Literal["gpu", "igpu", "npu", "tpu"]
    name: str
    api: str = ""
    tops_int8: float | None = None


class Recommended(_Strict):
    """Starting settings for this device; the planner refines them with measurements."""

    n_threads: int = Field(ge=1)
    max_batch: int = Field(ge=1, le=256)
    n_ctx: int = Field(ge=512)
    kv_type: KVType = "f16"
    model: str  # largest model class that runs usefully, e.g. "1.5B Q4_K_M"
    power_profile: Literal["unchanged", "performance", "balanced", "powersave", "dynamic"] = "unchanged"
    notes: list[str] = Field(default_factory=list)


class DeviceEntry(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    family: Family
    match: MatchRules
    cpu: CpuSpec
    memory: MemorySpec
    tdp_w: float | None = Field(None, gt=0, description="sustained power (SoC TDP or board power under load)")
    accelerators: list[AcceleratorSpec] = Field(default_factory=list)
    recommended: Recommended
    sources: list[str] = Field(min_length=1)
    notes: str = ""


@lru_cache(maxsize=4)
def load_library(folder: str | None = None) -> tuple[DeviceEntry, ...]:
    """Every device entry, validated; a bad file is an error naming the file and field."""
    entries = []
    for path in sorted(Path(folder or DEVICES_DIR).glob("*.json")):
        try:
            entry = DeviceEntry.model_validate(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise LiteInferError(f"{path}: not valid JSON ({e})") from None
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise LiteInferError(f"{path}: field {loc}: {err['msg']}") from None
        if entry.id != path.stem:
            raise LiteInferError(f"{path}: field id is {entry.id!r}, must equal the file name")
        entries.append(entry)
    return tuple(entries)


def get_entry(device_id: str) -> DeviceEntry:
    for e in load_library():
        if e.id == device_id:
            return e
    raise LiteInferError(f"unknown device {device_id!r} (see liteinfer/hardware/devices/)")


# --- matching -----------------------------------------------------------------------------

# Weights of the score's parts; they sum to 1. Identity (board/SoC/CPU name) dominates:
# two machines with the same cores and memory but different SoCs behave differently.
WEIGHTS = {"identity": 0.45, "cores": 0.15, "memory": 0.15, "isa": 0.15, "accelerators": 0.05, "platform": 0.05}


@dataclass
class Match:
    entry: DeviceEntry
    score: float  # 0..1
    parts: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def closeness(self) -> str:
        if self.score >= 0.85:
            return "exact"  # this device (memory size may differ)
        if self.score >= 0.65:
            return "close"  # same kind of machine
        if self.score >= 0.45:
            return "similar"  # comparable cores/ISA/memory, different product
        return "weak"  # nothing in the library looks like this machine


def _any(patterns: list[str], *texts: str) -> bool:
    return any(re.search(p, t, re.I) for p in patterns for t in texts if t)


def _ratio_score(a: float, b: float) -> float:
    """1 when equal, 0 at a factor of 4 apart (log scale: 2 GB vs 4 GB like 8 vs 16)."""
    if a <= 0 or b <= 0:
        return 0.0
    return max(0.0, 1 - abs(math.log2(a / b)) / 2)


def _arch(a: str) -> str:
    return "aarch64" if a in ("aarch64", "arm64") else a


def score(p: Probe, e: DeviceEntry) -> Match:
    m = Match(entry=e, score=0.0)
    rules = e.match
    ident = 0.0
    if rules.board and _any(rules.board, p.board):
        ident, why = 1.0, f"board {p.board!r}"
    elif rules.compatible and any(_any(rules.compatible, c) for c in p.compatible):
        ident, why = 0.8, "SoC (device tree)"
    elif rules.cpu_model and _any(rules.cpu_model, p.cpu.model_name):
        ident, why = 0.6, f"CPU {p.cpu.model_name!r}"
    else:
        why = ""
    if rules.cloud:
        if p.cloud == rules.cloud:
            ident = max(ident, 0.5) + (0.5 if rules.board and _any(rules.board, p.board) else 0.0)
            why = why or f"cloud {p.cloud}"
        else:
            ident *= 0.5  # a cloud entry without the cloud's DMI is at best similar
    if why:
        m.reasons.append(f"same {why}")
    m.parts["identity"] = min(1.0, ident)
    m.parts["cores"] = _ratio_score(p.cpu.logical_cores, e.cpu.threads) * 0.5 + _ratio_score(
        p.cpu.physical_cores, e.cpu.cores) * 0.5
    mem_gb = (p.memory.total_mb or 1) / 1024
    m.parts["memory"] = _ratio_score(mem_gb, e.memory.gb)
    have, want = set(p.cpu.isa), set(e.cpu.isa)
    m.parts["isa"] = len(have & want) / len(have | want) if have | want else 1.0
    kinds_p = {a.kind for a in p.compute_accelerators()}
    kinds_e = {a.kind for a in e.accelerators}
    m.parts["accelerators"] = 1.0 if kinds_p == kinds_e else len(kinds_p & kinds_e) / len(kinds_p | kinds_e)
    virt_ok = rules.virtual is None or rules.virtual == (p.cpu.hypervisor or bool(p.cloud))
    m.parts["platform"] = 1.0 if virt_ok else 0.0
    m.score = sum(WEIGHTS[k] * v for k, v in m.parts.items())
    if _arch(p.cpu.arch) != _arch(e.cpu.arch):
        m.score = min(m.score, 0.1)  # an x86 entry says nothing useful about an ARM board
        m.reasons.append(f"different architecture ({p.cpu.arch} vs {e.cpu.arch})")
    if p.cpu.logical_cores != e.cpu.threads:
        m.reasons.append(f"{p.cpu.logical_cores} vs {e.cpu.threads} threads")
    if abs(mem_gb - e.memory.gb) / e.memory.gb > 0.2:
        m.reasons.append(f"{mem_gb:.0f} GB vs {e.memory.gb:g} GB memory")
    missing = want - have
    if missing:
        m.reasons.append(f"lacks {', '.join(sorted(missing))}")
    m.score = round(m.score, 3)
    return m


def match(p: Probe, entries: tuple[DeviceEntry, ...] | None = None) -> list[Match]:
    """All entries scored against the probe, best first."""
    entries = entries if entries is not None else load_library()
    return sorted((score(p, e) for e in entries), key=lambda m: (-m.score, m.entry.id))


def best_match(p: Probe) -> Match | None:
    ranked = match(p)
    return ranked[0] if ranked else None
