"""cpufreq: read and set governor, energy_performance_preference and min/max frequency.

Every function takes `sys_root` ("/sys" on a real machine, a fake tree in tests). Setting a
profile is all-or-nothing: it checks every file it would write first, and if a write still
fails halfway it puts back what it already changed, so a refused change leaves the machine
exactly as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from liteinfer.core.errors import LiteInferError

PROFILES = ("performance", "balanced", "powersave", "dynamic")
CPUFREQ_DIR = "devices/system/cpu/cpufreq"


@dataclass
class PolicyState:
    """One cpufreq policy (a group of CPUs that share a clock), as read from sysfs."""

    path: Path
    cpus: list[int] = field(default_factory=list)
    driver: str | None = None
    governor: str | None = None
    governors: list[str] = field(default_factory=list)
    epp: str | None = None  # energy_performance_preference (intel_pstate / amd-pstate)
    epps: list[str] = field(default_factory=list)
    min_khz: int | None = None
    max_khz: int | None = None
    hw_min_khz: int | None = None  # cpuinfo_min_freq: what the hardware allows
    hw_max_khz: int | None = None
    cur_khz: int | None = None

    @property
    def name(self) -> str:
        return self.path.name


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # missing, unreadable, or a driver that refuses the read
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _cpus(text: str | None) -> list[int]:
    """Parse "0 1 2" (affected_cpus) or "0-3,5" (cpulist) forms."""
    cpus: list[int] = []
    for part in (text or "").replace(",", " ").split():
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def read_policy(path: Path) -> PolicyState:
    return PolicyState(
        path=path,
        cpus=_cpus(_read(path / "affected_cpus") or _read(path / "related_cpus")),
        driver=_read(path / "scaling_driver"),
        governor=_read(path / "scaling_governor"),
        governors=(_read(path / "scaling_available_governors") or "").split(),
        epp=_read(path / "energy_performance_preference"),
        epps=(_read(path / "energy_performance_available_preferences") or "").split(),
        min_khz=_read_int(path / "scaling_min_freq"),
        max_khz=_read_int(path / "scaling_max_freq"),
        hw_min_khz=_read_int(path / "cpuinfo_min_freq"),
        hw_max_khz=_read_int(path / "cpuinfo_max_freq"),
        cur_khz=_read_int(path / "scaling_cur_freq") or _read_int(path / "cpuinfo_cur_freq"),
    )


def read_policies(sys_root: str | os.PathLike = "/sys") -> list[PolicyState]:
    """All cpufreq policies; [] when the kernel exposes no cpufreq (VMs, containers)."""
    base = Path(sys_root, CPUFREQ_DIR)
    if not base.is_dir():
        return []
    dirs = sorted((p for p in base.glob("policy*") if p.is_dir()), key=lambda p: _policy_num(p.name))
    return [read_policy(p) for p in dirs]


def _policy_num(name: str) -> int:
    digits = name.removeprefix("policy")
    return int(digits) if digits.isdigit() else 1 << 30


def _first(wanted: list[str], available: list[str]) -> str | None:
    return next((w for w in wanted if w in available), None)


def plan_profile(state: PolicyState, profile: str) -> dict[str, str]:
    """The sysfs writes (file name -> value) that put one policy into `profile`.

    Pure: only files that exist and values the driver lists as available, and only those
    that differ from the current value. "dynamic" starts in the idle (low) state; the
    server's DynamicPolicy moves it between "powersave" and "performance".
    """
    if profile == "dynamic":
        profile = "powersave"
    if profile not in ("performance", "balanced", "powersave"):
        raise LiteInferError(f"unknown power profile {profile!r}; choose one of {', '.join(PROFILES)}")
    # intel_pstate/amd-pstate offer only performance|powersave governors and do the real work
    # through EPP; cpufreq-dt (Raspberry Pi, most ARM boards) has schedutil/ondemand.
    governor_pref = {
        "performance": ["performance"],
        "balanced": ["schedutil", "ondemand", "conservative", "powersave"],
        "powersave": ["powersave", "conservative", "schedutil"],
    }[profile]
    epp_pref = {
        "performance": ["performance"],
        "balanced": ["balance_performance", "default", "balance_power"],
        "powersave": ["power", "balance_power"],
    }[profile]
    writes: dict[str, str] = {}
    governor = _first(governor_pref, state.governors)
    if governor and governor != state.governor:
        writes["scaling_governor"] = governor
    # The full hardware range; powersave on a cpufreq-dt board pins the minimum via the governor.
    if state.hw_min_khz is not None and state.min_khz is not None and state.min_khz != state.hw_min_khz:
        writes["scaling_min_freq"] = str(state.hw_min_khz)
    if state.hw_max_khz is not None and state.max_khz is not None and state.max_khz != state.hw_max_khz:
        writes["scaling_max_freq"] = str(state.hw_max_khz)
    # The kernel refuses EPP writes other than "performance" while the governor is performance.
    final_governor = writes.get("scaling_governor", state.governor)
    epp = _first(epp_pref, state.epps)
    if state.epp is not None and epp and epp != state.epp:
        if final_governor != "performance" or epp == "performance":
            writes["energy_performance_preference"] = epp
    return writes


def set_limits(state: PolicyState, min_khz: int | None = None, max_khz: int | None = None) -> dict[str, str]:
    """Writes for explicit min/max frequency limits, validated against the hardware range."""
    writes: dict[str, str] = {}
    lo, hi = state.hw_min_khz, state.hw_max_khz
    for name, value in (("scaling_min_freq", min_khz), ("scaling_max_freq", max_khz)):
        if value is None:
            continue
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise LiteInferError(f"{state.name}: {value} kHz is outside the hardware range {lo}-{hi} kHz")
        writes[name] = str(value)
    if min_khz is not None and max_khz is not None and min_khz > max_khz:
        raise LiteInferError(f"min frequency {min_khz} kHz is above max {max_khz} kHz")
    return writes


def restore_plan(states: list[PolicyState]) -> dict[Path, dict[str, str]]:
    """The writes that put policies back as they were read (after a tuning run, say)."""
    plan: dict[Path, dict[str, str]] = {}
    for st in states:
        writes = {"scaling_governor": st.governor, "scaling_min_freq": st.min_khz,
                  "scaling_max_freq": st.max_khz, "energy_performance_preference": st.epp}
        plan[st.path] = {k: str(v) for k, v in writes.items() if v is not None}
    return plan


def _writable(path: Path) -> bool:
    # effective_ids: honour a dropped euid (sudo -u, tests) rather than the real uid.
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def apply(plan: dict[Path, dict[str, str]]) -> list[str]:
    """Write a plan {policy dir: {file: value}}; all-or-nothing. Returns what changed.

    Raises LiteInferError explaining what was refused; nothing is left changed then.
    """
    targets = [(d / name, value) for d, writes in plan.items() for name, value in writes.items()]
    refused = [str(p) for p, _ in targets if not p.exists() or not _writable(p)]
    if refused:
        raise LiteInferError(
            f"no permission to change {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}: "
            "nothing changed; run as root (sudo liteinfer power set ...) or grant write access "
            "to the cpufreq files (e.g. a udev rule)"
        )
    done: list[tuple[Path, str]] = []
    # min before max would fail when raising both past the old max; order by what is safe.
    targets.sort(key=lambda t: _write_order(t[0].name, t[1], t[0]))
    for path, value in targets:
        old = _read(path)
        try:
            path.write_text(value)
        except OSError as e:
            for done_path, done_old in reversed(done):  # put back what already changed
                try:
                    done_path.write_text(done_old)
                except OSError:
                    pass
            raise LiteInferError(
                f"writing {value!r} to {path} failed ({e.strerror or e}): nothing changed"
            ) from None
        done.append((path, old if old is not None else ""))
    return [f"{p.parent.name}/{p.name}: {old} -> {new}" for (p, old), (_, new) in zip(done, targets, strict=True)]


def _write_order(name: str, value: str, path: Path) -> tuple[int, int]:
    # Governor first (EPP depends on it); raising max before min, lowering min before max.
    if name == "scaling_governor":
        return (0, 0)
    if name in ("scaling_min_freq", "scaling_max_freq"):
        old = _read_int(path) or 0
        raising = int(value) > old
        first = "scaling_max_freq" if raising else "scaling_min_freq"
        return (1, 0 if name == first else 1)
    return (2, 0)


def set_profile(profile: str, sys_root: str | os.PathLike = "/sys", dry_run: bool = False) -> list[str]:
    """Put every policy into `profile`. Returns the changes (or planned ones with dry_run)."""
    policies = read_policies(sys_root)
    if not policies:
        raise LiteInferError(
            f"cpufreq unavailable: {Path(sys_root, CPUFREQ_DIR)} has no policies "
            "(virtual machine, container, or a kernel without cpufreq); nothing changed"
        )
    plan = {s.path: plan_profile(s, profile) for s in policies}
    plan = {d: w for d, w in plan.items() if w}
    if dry_run:
        return [f"{d.name}/{k}: -> {v}" for d, w in plan.items() for k, v in w.items()]
    return apply(plan)
