"""Fake sysfs trees for power tests: cpufreq policies and RAPL (powercap) energy zones."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CPUFREQ_DIR = "devices/system/cpu/cpufreq"  # liteinfer.hardware.cpufreq.CPUFREQ_DIR


def make_policy(sys_root: Path, n: int, driver: str = "intel_pstate", epp: bool = True, **over: str) -> Path:
    """An intel_pstate-like policy in powersave, EPP balance_power, max capped at 2 GHz."""
    d = sys_root / CPUFREQ_DIR / f"policy{n}"
    d.mkdir(parents=True)
    files = {
        "affected_cpus": f"{n}",
        "scaling_driver": driver,
        "scaling_governor": "powersave",
        "scaling_available_governors": "performance powersave",
        "scaling_min_freq": "800000",
        "scaling_max_freq": "2000000",
        "cpuinfo_min_freq": "800000",
        "cpuinfo_max_freq": "3500000",
        "scaling_cur_freq": "1200000",
    }
    if epp:
        files["energy_performance_preference"] = "balance_power"
        files["energy_performance_available_preferences"] = (
            "default performance balance_performance balance_power power"
        )
    files.update(over)
    for name, value in files.items():
        (d / name).write_text(value + "\n")
    return d


def snapshot(sys_root: Path) -> dict[str, str]:
    """Every file under sys_root and its content: compare before and after."""
    return {str(p.relative_to(sys_root)): p.read_text().strip() for p in sorted(sys_root.rglob("*")) if p.is_file()}


def make_rapl(root: Path, zone: str, energy_uj: int, max_uj: int, name: str = "package-0") -> Path:
    d = root / "class/powercap" / zone
    d.mkdir(parents=True)
    (d / "name").write_text(f"{name}\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@contextlib.contextmanager
def unprivileged():
    """Really lose write permission: as root, drop the effective uid to nobody."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
