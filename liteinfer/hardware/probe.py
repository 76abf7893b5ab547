"""What this machine is: CPU, ISA, caches, memory, container limits, GPUs/NPUs, power interfaces.

Everything is read from files under `root` (/proc, /sys, /dev, device tree, DMI) so tests can
point it at a recorded fixture tree (GPUs/NPUs: accelerators.py; file readers: sysfs.py).
Tools (NVML, sysctl, vcgencmd) are asked only when root is "/". Every probe degrades
gracefully: a failure becomes a note, never an exception.
"""

from __future__ import annotations

import os
import platform as _platform
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from liteinfer.hardware.accelerators import Accelerator, probe_accelerators
from liteinfer.hardware.cores import cgroup_cpu_limit
from liteinfer.hardware.sysfs import cpu_list, read, read_dt, run, size_kb, to_int

PROBE_VERSION = 1

# ARM "CPU part" ids (implementer 0x41 = Arm Ltd.) -> core names; the ones small boards use.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xd87": "Cortex-A725",
}
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x4e": "NVIDIA", "0x51": "Qualcomm",
                    "0x61": "Apple", "0xc0": "Ampere", "0x48": "HiSilicon"}

# Kernel flag -> the ISA feature names liteinfer uses (what matters to GEMM/GEMV kernels).
X86_ISA = {
    "sse4_2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni", "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16", "amx_tile": "amx", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}
ARM_ISA = {
    "asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
    "sve": "sve", "sve2": "sve2", "sme": "sme",
}
# Apple sysctl hw.optional.* keys -> the same names.
DARWIN_ISA = {
    "hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme",
}

class CpuCluster(BaseModel):
    """CPUs of one kind: same core type, capacity and max frequency (big.LITTLE has several)."""

    cpus: list[int]
    core: str = ""  # "Cortex-A76", or "" when the kernel does not say
    capacity: int | None = None  # /sys cpu_capacity, 1024 = the biggest core
    max_freq_mhz: float | None = None
    kind: Literal["uniform", "big", "little", "mid"] = "uniform"


class Cache(BaseModel):
    level: int
    type: str  # Data, Instruction, Unified
    size_kb: int  # one instance
    shared_by: int = 1  # logical CPUs sharing one instance
    instances: int = 1


class CpuInfo(BaseModel):
    arch: str = ""
    vendor: str = ""
    model_name: str = ""
    logical_cores: int = 1
    physical_cores: int = 1
    clusters: list[CpuCluster] = Field(default_factory=list)
    isa: list[str] = Field(default_factory=list)
    caches: list[Cache] = Field(default_factory=list)
    hypervisor: bool = False
    smt: bool = False

    @property
    def big_little(self) -> bool:
        return len(self.clusters) > 1

    def big_cores(self) -> int:
        """Physical cores in the fastest cluster (all of them on a uniform CPU)."""
        if not self.big_little:
            return self.physical_cores
        best = max(self.clusters, key=lambda c: (c.capacity or 0, c.max_freq_mhz or 0))
        threads_per_core = max(1, self.logical_cores // max(1, self.physical_cores))
        return max(1, len(best.cpus) // threads_per_core)

    def cache_kb(self, level: int) -> int:
        """Total data/unified cache at `level` over all instances."""
        return sum(c.size_kb * c.instances for c in self.caches if c.level == level and c.type != "Instruction")


class MemoryInfo(BaseModel):
    total_mb: int = 0
    available_mb: int = 0
    swap_total_mb: int = 0
    swap_free_mb: int = 0
    memlock_limit_mb: int | None = None  # RLIMIT_MEMLOCK; None = unlimited or unknown


class ContainerInfo(BaseModel):
    in_container: bool = False
    cgroup_version: int | None = None
    cpu_quota: float | None = None  # CPUs allowed by the quota; None = unlimited
    memory_limit_mb: int | None = None  # None = unlimited


class PowerInterfaces(BaseModel):
    cpufreq: bool = False
    governors: list[str] = Field(default_factory=list)
    governor: str = ""
    scaling_driver: str = ""
    rapl_domains: list[str] = Field(default_factory=list)
    rapl_readable: bool = False
    hwmon: list[str] = Field(default_factory=list)
    hwmon_power: list[str] = Field(default_factory=list)  # hwmon chips with power/energy/current
    thermal_zones: list[str] = Field(default_factory=list)
    battery: bool = False
    tools: list[str] = Field(default_factory=list)  # vcgencmd, nvpmodel, tegrastats, powermetrics

    @property
    def energy_meter(self) -> bool:
        return self.rapl_readable or bool(self.hwmon_power) or "vcgencmd" in self.tools


class Probe(BaseModel):
    probe_version: int = PROBE_VERSION
    root: str = "/"
    os: str = ""
    board: str = ""  # device-tree model or DMI product ("Raspberry Pi 5 Model B Rev 1.0")
    board_vendor: str = ""
    compatible: list[str] = Field(default_factory=list)  # device-tree compatible strings
    cloud: str = ""  # aws, gcp, azure, ... from DMI
    cpu: CpuInfo = Field(default_factory=CpuInfo)
    memory: MemoryInfo = Field(default_factory=MemoryInfo)
    container: ContainerInfo = Field(default_factory=ContainerInfo)
    accelerators: list[Accelerator] = Field(default_factory=list)
    power: PowerInterfaces = Field(default_factory=PowerInterfaces)
    usable_cores: int = 1
    notes: list[str] = Field(default_factory=list)  # what could not be read, and why
    elapsed_ms: float = 0.0

    @property
    def effective_memory_mb(self) -> int:
        """Memory this process may use: available RAM, capped by the cgroup limit."""
        avail = self.memory.available_mb or self.memory.total_mb
        limit = self.container.memory_limit_mb
        return min(avail, limit) if limit else avail

    def compute_accelerators(self) -> list[Accelerator]:
        return [a for a in self.accelerators if a.kind != "display"]


# --- CPU ----------------------------------------------------------------------------------


def _parse_cpuinfo(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split /proc/cpuinfo into per-processor blocks and the trailing board lines (ARM)."""
    blocks, tail = [], {}
    for chunk in text.split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            blocks.append(fields)
        elif fields:
            tail.update(fields)
    return blocks, tail


def _probe_cpu(root: Path, p: Probe) -> None:
    cpu = p.cpu
    text = read(root / "proc/cpuinfo") or ""
    blocks, tail = _parse_cpuinfo(text)
    first = blocks[0] if blocks else {}
    flags = set((first.get("flags") or first.get("Features") or "").split())
    if "flags" in first or "vendor_id" in first:
        cpu.arch = "x86_64"
        vendor = first.get("vendor_id", "")
        cpu.vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
        cpu.model_name = first.get("model name", "")
        cpu.isa = sorted({name for flag, name in X86_ISA.items() if flag in flags})
        if {"avx512_vnni", "avx_vnni"} & set(cpu.isa):
            cpu.isa = sorted({*cpu.isa, "vnni"})
        cpu.hypervisor = "hypervisor" in flags
    elif "Features" in first or "CPU implementer" in first:
        cpu.arch = "aarch64"
        cpu.vendor = ARM_IMPLEMENTERS.get(first.get("CPU implementer", ""), first.get("CPU implementer", ""))
        cpu.isa = sorted({name for flag, name in ARM_ISA.items() if flag in flags})
        if "Model" in tail and not p.board:
            p.board = tail["Model"]
    if not cpu.arch and str(root) == "/":
        cpu.arch = _platform.machine()

    sysdir = root / "sys/devices/system/cpu"
    online = read(sysdir / "online")
    cpus = cpu_list(online) if online else [int(b["processor"]) for b in blocks if b["processor"].isdigit()]
    cpu.logical_cores = max(1, len(cpus))

    # Physical cores: distinct thread-sibling groups (works on x86 and ARM alike).
    siblings: set[str] = set()
    per_cpu: dict[int, dict[str, Any]] = {}
    for n in cpus:
        d = sysdir / f"cpu{n}"
        sib = read(d / "topology/thread_siblings_list")
        siblings.add(sib.strip() if sib else str(n))
        block = next((b for b in blocks if b.get("processor") == str(n)), {})
        freq = to_int(read(d / "cpufreq/cpuinfo_max_freq"))
        per_cpu[n] = {
            "capacity": to_int(read(d / "cpu_capacity")),
            "freq": freq / 1000 if freq else None,
            "part": ARM_PARTS.get(block.get("CPU part", ""), block.get("CPU part", "")),
        }
    if not siblings and first:  # no sysfs: fall back to cpuinfo's counts
        cores, sibs = to_int(first.get("cpu cores")), to_int(first.get("siblings"))
        cpu.physical_cores = cores if cores and sibs else cpu.logical_cores
    else:
        cpu.physical_cores = max(1, len(siblings))
    cpu.smt = cpu.logical_cores > cpu.physical_cores

    # Clusters: group CPUs by (core type, capacity, max freq).
    groups: dict[tuple, list[int]] = {}
    for n, info in per_cpu.items():
        groups.setdefault((info["part"], info["capacity"], info["freq"]), []).append(n)
    clusters = [
        CpuCluster(cpus=sorted(c), core=k[0], capacity=k[1], max_freq_mhz=k[2]) for k, c in groups.items()
    ]
    clusters.sort(key=lambda c: (-(c.capacity or 0), -(c.max_freq_mhz or 0), c.cpus[0]))
    if len(clusters) > 1:
        for i, c in enumerate(clusters):
            c.kind = "big" if i == 0 else "little" if i == len(clusters) - 1 else "mid"
    cpu.clusters = clusters
    if cpu.arch == "aarch64" and not cpu.model_name:
        names = [f"{len(c.cpus)}x {c.core}" for c in clusters if c.core]
        cpu.model_name = " + ".join(names) or tail.get("Hardware", "")

    # Caches: distinct instances (shared_cpu_list), grouped by kind with an instance count.
    seen: set[tuple] = set()
    kinds: dict[tuple, Cache] = {}
    for n in cpus:
        for idx in sorted((sysdir / f"cpu{n}/cache").glob("index*")):
            level, ctype = to_int(read(idx / "level")), (read(idx / "type") or "").strip()
            size, shared = read(idx / "size"), (read(idx / "shared_cpu_list") or str(n)).strip()
            if level is None or not size:
                continue
            key = (level, ctype, shared)
            if key in seen:
                continue
            seen.add(key)
            kind = (level, ctype, size_kb(size))
            if kind in kinds:
                kinds[kind].instances += 1
            else:
                kinds[kind] = Cache(level=level, type=ctype, size_kb=kind[2],
                                    shared_by=len(cpu_list(shared)) if shared else 1)
    cpu.caches = sorted(kinds.values(), key=lambda c: (c.level, c.type, -c.size_kb))


def _probe_darwin(p: Probe, sysctl_text: str) -> None:
    """Apple silicon / Intel Macs from `sysctl -a` output."""
    kv = {}
    for line in sysctl_text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            kv[key.strip()] = value.strip()
    cpu = p.cpu
    cpu.arch = "arm64" if kv.get("hw.optional.arm64") == "1" else kv.get("hw.machine", "x86_64")
    cpu.model_name = kv.get("machdep.cpu.brand_string", "")
    cpu.vendor = "Apple" if cpu.model_name.startswith("Apple") else kv.get("machdep.cpu.vendor", "")
    cpu.logical_cores = to_int(kv.get("hw.logicalcpu")) or 1
    cpu.physical_cores = to_int(kv.get("hw.physicalcpu")) or cpu.logical_cores
    cpu.isa = sorted({name for key, name in DARWIN_ISA.items() if kv.get(key) == "1"})
    start = 0
    for level in range(int(kv.get("hw.nperflevels", "0") or 0)):
        n = to_int(kv.get(f"hw.perflevel{level}.physicalcpu")) or 0
        name = kv.get(f"hw.perflevel{level}.name", f"level{level}")
        cpu.clusters.append(CpuCluster(cpus=list(range(start, start + n)), core=name,
                                       capacity=1024 >> level))
        start += n
    if len(cpu.clusters) > 1:
        for i, c in enumerate(cpu.clusters):
            c.kind = "big" if i == 0 else "little"
    for level, key in ((1, "hw.l1dcachesize"), (2, "hw.l2cachesize"), (3, "hw.l3cachesize")):
        size = to_int(kv.get(key))
        if size:
            cpu.caches.append(Cache(level=level, type="Data" if level == 1 else "Unified", size_kb=size // 1024))
    mem = to_int(kv.get("hw.memsize")) or 0
    p.memory.total_mb = mem // 2**20
    p.memory.available_mb = p.memory.total_mb  # unified memory; vm_stat would refine this
    swap = re.search(r"total = ([\d.]+)M", kv.get("vm.swapusage", ""))
    if swap:
        p.memory.swap_total_mb = int(float(swap.group(1)))
    p.board = kv.get("hw.model", "")
    p.board_vendor = "Apple"
    if cpu.vendor == "Apple":
        p.accelerators.append(Accelerator(kind="igpu", vendor="Apple", name=f"{cpu.model_name} GPU",
                                          api="metal", usable=True, memory_mb=p.memory.total_mb))
        p.accelerators.append(Accelerator(kind="npu", vendor="Apple", name="Apple Neural Engine",
                                          api="coreml", usable=True))
    p.power.tools = [t for t in ("powermetrics",) if str(p.root) != "/" or shutil.which(t)]


# --- memory and container -----------------------------------------------------------------


def _probe_memory(root: Path, p: Probe) -> None:
    info = {}
    for line in (read(root / "proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        n = to_int(value.split()[0]) if value.split() else None
        if n is not None:
            info[key.strip()] = n // 1024
    m = p.memory
    m.total_mb = info.get("MemTotal", 0)
    m.available_mb = info.get("MemAvailable", info.get("MemFree", 0))
    m.swap_total_mb = info.get("SwapTotal", 0)
    m.swap_free_mb = info.get("SwapFree", 0)
    limits = read(root / "proc/self/limits") or ""
    hit = re.search(r"Max locked memory\s+(\S+)", limits)
    if hit:
        m.memlock_limit_mb = None if hit.group(1) == "unlimited" else int(hit.group(1)) // 2**20


def _cgroup_paths(root: Path) -> dict[str, str]:
    """controller -> this process's cgroup path (v2 uses the key '')."""
    paths = {}
    for line in (read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                paths[ctrl] = parts[2]
    return paths


def _probe_container(root: Path, p: Probe) -> None:
    c = p.container
    cg = root / "sys/fs/cgroup"
    paths = _cgroup_paths(root)
    if (cg / "cgroup.controllers").exists():
        c.cgroup_version = 2
    elif (cg / "memory").is_dir() or (cg / "cpu").is_dir():
        c.cgroup_version = 1
    # The quota may sit on our own (nested) cgroup or on the namespace root we see as "/".
    candidates = [cg]
    if c.cgroup_version == 2 and paths.get("", "/") != "/":
        candidates.insert(0, cg / paths[""].lstrip("/"))
    quotas = [q for q in (cgroup_cpu_limit(str(d)) for d in candidates) if q is not None]
    c.cpu_quota = min(quotas) if quotas else None

    mem_files = [cg / "memory.max"]
    if c.cgroup_version == 2 and paths.get("", "/") != "/":
        mem_files.insert(0, cg / paths[""].lstrip("/") / "memory.max")
    if c.cgroup_version == 1:
        mem_files = [cg / "memory/memory.limit_in_bytes"]
        if paths.get("memory", "/") != "/":
            mem_files.insert(0, cg / "memory" / paths["memory"].lstrip("/") / "memory.limit_in_bytes")
    limits = []
    for f in mem_files:
        v = (read(f) or "").strip()
        # cgroup v1 writes "unlimited" as a huge page-rounded number; anything >= 2**60 is that.
        if v.isdigit() and int(v) < 2**60:
            limits.append(int(v) // 2**20)
    c.memory_limit_mb = min(limits) if limits else None

    pid1 = read(root / "proc/1/cgroup") or ""
    c.in_container = (
        (root / ".dockerenv").exists()
        or (root / "run/.containerenv").exists()
        or any(w in pid1 for w in ("docker", "kubepods", "containerd", "libpod", "lxc"))
        or c.cpu_quota is not None
        or c.memory_limit_mb is not None
    )


def _usable_cores(root: Path, p: Probe) -> int:
    n = p.cpu.physical_cores
    if str(root) == "/" and hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        n = min(n, max(1, allowed // (2 if p.cpu.smt else 1)) if allowed < p.cpu.logical_cores else n)
    if p.container.cpu_quota is not None:
        n = min(n, max(1, int(p.container.cpu_quota)))
    return max(1, n)


# --- board identity -----------------------------------------------------------------------


def _probe_board(root: Path, p: Probe) -> None:
    for dt in (root / "proc/device-tree", root / "sys/firmware/devicetree/base"):
        model = read_dt(dt / "model").strip("\x00 \n")
        if model:
            p.board = model
            p.compatible = [s for s in read_dt(dt / "compatible").split("\x00") if s]
            break
    dmi = root / "sys/class/dmi/id"
    vendor = (read(dmi / "sys_vendor") or "").strip()
    product = (read(dmi / "product_name") or "").strip()
    bios = (read(dmi / "bios_vendor") or "").strip()
    if vendor or product:
        p.board_vendor = vendor
        if not p.board:
            p.board = product
    text = f"{vendor} {product} {bios}".lower()
    for key, cloud in (("amazon", "aws"), ("google", "gcp"), ("microsoft", "azure"),
                       ("digitalocean", "digitalocean"), ("hetzner", "hetzner"), ("openstack", "openstack")):
        if key in text:
            p.cloud = cloud
            break
    if not p.board_vendor and p.compatible:
        p.board_vendor = p.compatible[0].split(",")[0]


# --- power --------------------------------------------------------------------------------


def _probe_power(root: Path, p: Probe) -> None:
    pw = p.power
    policies = sorted((root / "sys/devices/system/cpu/cpufreq").glob("policy*"))
    if policies:
        pw.cpufreq = True
        pol = policies[0]
        pw.governors = (read(pol / "scaling_available_governors") or "").split()
        pw.governor = (read(pol / "scaling_governor") or "").strip()
        pw.scaling_driver = (read(pol / "scaling_driver") or "").strip()
    for zone in sorted((root / "sys/class/powercap").glob("*rapl*:*")):
        name = (read(zone / "name") or zone.name).strip()
        pw.rapl_domains.append(name)
        if os.access(zone / "energy_uj", os.R_OK) and read(zone / "energy_uj") is not None:
            pw.rapl_readable = True
    for hw in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        name = (read(hw / "name") or hw.name).strip()
        pw.hwmon.append(name)
        if any(hw.glob("power*_input")) or any(hw.glob("energy*_input")) or any(hw.glob("curr*_input")):
            pw.hwmon_power.append(name)
    pw.thermal_zones = [(read(z / "type") or z.name).strip() for z in sorted((root / "sys/class/thermal").glob("thermal_zone*"))]
    pw.battery = any((read(s / "type") or "").strip() == "Battery" for s in (root / "sys/class/power_supply").glob("*"))
    for tool in ("vcgencmd", "nvpmodel", "tegrastats", "jetson_clocks", "powermetrics"):
        found = shutil.which(tool) if str(root) == "/" else next(
            (d for d in ("usr/bin", "usr/sbin", "bin") if (root / d / tool).exists()), None)
        if found:
            pw.tools.append(tool)


# --- entry point --------------------------------------------------------------------------


def _add_accelerators(root: Path, p: Probe) -> None:
    found, notes = probe_accelerators(root, p.compatible, p.memory.total_mb)
    p.accelerators.extend(found)
    p.notes.extend(notes)


def probe(root: str | os.PathLike = "/", os_name: str | None = None) -> Probe:
    """Probe the machine at `root` (a recorded tree in tests). Never raises."""
    t0 = time.perf_counter()
    root = Path(root)
    live = str(root) == "/"
    os_name = os_name or (sys.platform if live else ("darwin" if (root / "sysctl.txt").exists() else "linux"))
    p = Probe(root=str(root), os=os_name)

    def step(name: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # a probe that breaks must not take the others down
            p.notes.append(f"{name}: {type(e).__name__}: {e}")

    if os_name == "darwin":
        text = run(["sysctl", "-a"]) if live else read(root / "sysctl.txt")
        step("darwin", lambda: _probe_darwin(p, text or ""))
        if not text:
            p.notes.append("sysctl: no output")
    else:
        step("board", lambda: _probe_board(root, p))
        step("cpu", lambda: _probe_cpu(root, p))
        step("memory", lambda: _probe_memory(root, p))
        step("container", lambda: _probe_container(root, p))
        step("accelerators", lambda: _add_accelerators(root, p))
        step("power", lambda: _probe_power(root, p))
        if not (root / "proc/cpuinfo").exists():
            p.notes.append("no /proc/cpuinfo: CPU details unknown")
    if live and p.memory.memlock_limit_mb is None:
        step("memlock", lambda: _memlock(p))
    step("usable_cores", lambda: setattr(p, "usable_cores", _usable_cores(root, p)))
    p.elapsed_ms = round((time.perf_counter() - t0) * 1000, 1)
    return p


def _memlock(p: Probe) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    p.memory.memlock_limit_mb = None if soft == resource.RLIM_INFINITY else soft // 2**20


def summary(p: Probe) -> list[str]:
    """Human-readable lines: what was found."""
    c = p.cpu
    lines = [f"board:   {p.board or 'unknown'}" + (f" ({p.cloud})" if p.cloud else "")]
    clusters = ", ".join(
        f"{len(k.cpus)}x {k.core or 'core'}" + (f" @{k.max_freq_mhz:.0f} MHz" if k.max_freq_mhz else "")
        for k in c.clusters) if c.big_little else ""
    lines.append(f"cpu:     {c.model_name or c.vendor or 'unknown'} [{c.arch}] {c.physical_cores} cores / "
                 f"{c.logical_cores} threads" + (f" ({clusters})" if clusters else "")
                 + (", virtualized" if c.hypervisor else ""))
    lines.append(f"isa:     {' '.join(c.isa) or 'baseline only'}")
    caches = ", ".join(
        f"L{k.level}{k.type[0].lower() if k.level == 1 else ''} {k.size_kb} KB"
        + (f" x{k.instances}" if k.instances > 1 else "") for k in c.caches)
    lines.append(f"caches:  {caches or 'unknown'}")
    m = p.memory
    lines.append(f"memory:  {m.total_mb} MB total, {m.available_mb} MB available, swap {m.swap_total_mb} MB")
    ct = p.container
    if ct.in_container or ct.cpu_quota or ct.memory_limit_mb:
        lines.append(f"limits:  cgroup v{ct.cgroup_version}, cpu quota {ct.cpu_quota or 'none'}, "
                     f"memory limit {f'{ct.memory_limit_mb} MB' if ct.memory_limit_mb else 'none'}")
    lines.append(f"usable:  {p.usable_cores} cores for compute, {p.effective_memory_mb} MB memory")
    for a in p.compute_accelerators():
        state = "usable" if a.usable else "found, no driver"
        lines.append(f"accel:   {a.kind} {a.name} [{a.api or '-'}] {state}")
    pw = p.power
    meters = [*(f"rapl:{d}" for d in pw.rapl_domains), *(f"hwmon:{h}" for h in pw.hwmon_power), *pw.tools]
    lines.append(f"power:   cpufreq {'(' + pw.governor + ')' if pw.cpufreq else 'no'}, meters: "
                 f"{', '.join(meters) or 'none'}")
    return lines
