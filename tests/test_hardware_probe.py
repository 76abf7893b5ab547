"""The probe on recorded /proc and /sys trees: what it detects on each kind of machine.

x86-vm/ was recorded on the development VM; the others were written in the kernel's file
formats from published specs (tests/fixtures/hw/synthesize.py says how).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from liteinfer.hardware.probe import Probe, probe, summary

HW = Path(__file__).parent / "fixtures" / "hw"


def fx(name: str) -> Probe:
    p = probe(HW / name)
    assert p.notes == [], p.notes  # every fixture is complete: nothing failed
    return p


def test_x86_vm_recorded():
    p = fx("x86-vm")
    c = p.cpu
    assert (c.arch, c.vendor, c.model_name) == ("x86_64", "AMD", "AMD EPYC")
    assert (c.physical_cores, c.logical_cores, c.smt, c.hypervisor) == (2, 2, False, True)
    assert {"avx2", "avx512", "avx512_vnni", "avx512_bf16", "vnni", "fma", "f16c"} <= set(c.isa)
    assert "amx" not in c.isa and "neon" not in c.isa
    assert not c.big_little
    assert c.cache_kb(2) == 2048 and c.cache_kb(3) == 32768
    l3 = next(k for k in c.caches if k.level == 3)
    assert (l3.shared_by, l3.instances) == (2, 1)
    assert p.memory.total_mb == 24105 and p.memory.swap_total_mb == 0
    assert p.memory.memlock_limit_mb == 8
    # cgroup v1, with this process in a nested memory cgroup that has no limit
    assert p.container.cgroup_version == 1 and p.container.in_container  # /.dockerenv
    assert p.container.cpu_quota is None and p.container.memory_limit_mb is None
    assert p.usable_cores == 2
    assert p.accelerators == []
    assert not p.power.cpufreq and not p.power.energy_meter


def test_raspberry_pi_5():
    p = fx("raspberry-pi-5")
    c = p.cpu
    assert p.board == "Raspberry Pi 5 Model B Rev 1.0" and "brcm,bcm2712" in p.compatible
    assert (c.arch, c.vendor, c.model_name) == ("aarch64", "ARM", "4x Cortex-A76")
    assert set(c.isa) == {"neon", "fp16", "dotprod"}  # no i8mm / sve on A76
    assert c.physical_cores == 4 and not c.big_little and c.clusters[0].max_freq_mhz == 2400
    assert c.cache_kb(2) == 4 * 512 and c.cache_kb(3) == 2048
    assert p.memory.total_mb == 8052 and p.memory.swap_total_mb == 199
    assert p.container.cgroup_version == 2 and p.container.cpu_quota is None and not p.container.in_container
    kinds = {(a.kind, a.driver) for a in p.accelerators}
    assert ("igpu", "v3d") in kinds and ("display", "vc4-drm") in kinds
    assert [a.driver for a in p.compute_accelerators()] == ["v3d"]
    pw = p.power
    assert pw.cpufreq and pw.governor == "ondemand" and "performance" in pw.governors
    assert pw.scaling_driver == "cpufreq-dt"
    assert "vcgencmd" in pw.tools and pw.energy_meter and pw.thermal_zones == ["cpu-thermal"]


def test_jetson_orin_nano():
    p = fx("jetson-orin-nano")
    c = p.cpu
    assert p.board == "NVIDIA Jetson Orin Nano Developer Kit" and "nvidia,tegra234" in p.compatible
    assert c.model_name == "6x Cortex-A78AE" and c.physical_cores == 6
    assert not c.big_little  # two clusters of the same core at the same clock are one kind
    assert {"neon", "fp16", "dotprod"} <= set(c.isa)
    gpu = p.compute_accelerators()
    assert len(gpu) == 1 and gpu[0].kind == "igpu" and gpu[0].api == "cuda" and gpu[0].usable
    assert "Orin" in gpu[0].name and gpu[0].node == "/dev/nvgpu/igpu0/ctrl"
    assert p.power.hwmon_power == ["ina3221"] and {"nvpmodel", "tegrastats"} <= set(p.power.tools)
    assert p.memory.memlock_limit_mb == 8  # the kernel's default RLIMIT_MEMLOCK


def test_orange_pi_5_big_little_and_npu():
    p = fx("orange-pi-5")
    c = p.cpu
    assert c.big_little and c.physical_cores == 8
    big, little = c.clusters
    assert (big.core, big.cpus, big.capacity, big.kind) == ("Cortex-A76", [4, 5, 6, 7], 1024, "big")
    assert (little.core, little.cpus, little.capacity, little.kind) == ("Cortex-A55", [0, 1, 2, 3], 530, "little")
    assert c.big_cores() == 4
    assert c.model_name == "4x Cortex-A76 + 4x Cortex-A55"
    npu = [a for a in p.accelerators if a.kind == "npu"]
    assert len(npu) == 1 and npu[0].vendor == "Rockchip" and npu[0].api == "rknn" and npu[0].usable
    assert "RK3588" in npu[0].name and "6 TOPS" in npu[0].name
    assert any(a.driver == "mali_kbase" for a in p.accelerators)
    assert not p.power.energy_meter  # no power sensor on this board
    assert "bigcore0-thermal" in p.power.thermal_zones


def test_container_limits_cap_cores_and_memory():
    p = fx("container-2cpu-4g")
    c = p.cpu
    assert c.vendor == "Intel" and "8375C" in c.model_name
    assert (c.physical_cores, c.logical_cores, c.smt) == (4, 8, True)
    assert "avx512_vnni" in c.isa and "avx_vnni" not in c.isa and "amx" not in c.isa
    ct = p.container
    assert ct.in_container and ct.cgroup_version == 2
    assert ct.cpu_quota == 2.0 and ct.memory_limit_mb == 4096
    assert p.usable_cores == 2
    assert p.memory.total_mb > 30000 and p.effective_memory_mb == 4096  # the limit, not the host
    assert p.cloud == "aws" and p.board == "m6i.2xlarge"
    assert any("limits:" in line and "4096 MB" in line for line in summary(p))


def test_mac_mini_m2_from_sysctl():
    p = fx("mac-mini-m2")
    c = p.cpu
    assert p.os == "darwin" and p.board == "Mac14,3"
    assert (c.arch, c.vendor, c.model_name) == ("arm64", "Apple", "Apple M2")
    assert c.big_little and c.big_cores() == 4
    assert {"neon", "dotprod", "i8mm", "bf16"} <= set(c.isa) and "sme" not in c.isa
    assert p.memory.total_mb == 16384 and p.memory.swap_total_mb == 1024
    assert {a.api for a in p.accelerators} == {"metal", "coreml"}


def test_probe_of_missing_or_damaged_tree_never_raises(tmp_path):
    empty = probe(tmp_path / "nothing")
    assert empty.usable_cores == 1 and any("cpuinfo" in n for n in empty.notes)
    # A damaged tree: garbage where numbers belong, a folder where a file belongs.
    root = tmp_path / "bad"
    shutil.copytree(HW / "raspberry-pi-5", root)
    (root / "proc/meminfo").write_text("MemTotal: lots\n")
    (root / "sys/devices/system/cpu/online").write_text("zero-three\n")
    (root / "sys/fs/cgroup/cgroup.controllers").unlink()
    (root / "proc/self/cgroup").unlink()
    (root / "proc/self/cgroup").mkdir()
    p = probe(root)
    assert p.cpu.arch == "aarch64" and p.memory.total_mb == 0
    assert any(n.startswith("cpu:") for n in p.notes)  # reported, not raised
    assert p.usable_cores >= 1


def test_live_probe_is_fast_and_sane():
    p = probe()
    assert p.cpu.logical_cores >= 1 and p.memory.total_mb > 0 and p.usable_cores >= 1
    assert p.elapsed_ms < 2000
    Probe.model_validate_json(p.model_dump_json())  # round-trips as JSON


@pytest.mark.parametrize("name", ["x86-vm", "raspberry-pi-5", "jetson-orin-nano", "orange-pi-5",
                                  "container-2cpu-4g", "mac-mini-m2"])
def test_summary_lines(name):
    lines = summary(probe(HW / name))
    assert lines[0].startswith("board:") and any(line.startswith("cpu:") for line in lines)


def test_record_reproduces_the_probe(tmp_path):
    from liteinfer.hardware.record import record

    n = record(tmp_path / "rec", src=HW / "orange-pi-5")
    assert n > 50
    a, b = probe(HW / "orange-pi-5"), probe(tmp_path / "rec")
    strip = {"root", "elapsed_ms"}
    assert a.model_dump(exclude=strip) == b.model_dump(exclude=strip)


def test_nvml_path_with_a_stand_in_module(monkeypatch):
    """No NVIDIA GPU here: a stand-in pynvml exercises the NVML branch's calls and shutdown."""
    import sys
    import types

    calls = []
    mem = types.SimpleNamespace(total=80 * 2**30)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3", nvmlDeviceGetMemoryInfo=lambda h: mem)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    p = probe()
    gpu = [a for a in p.accelerators if a.api == "cuda"]
    assert len(gpu) == 1 and gpu[0].name == "NVIDIA H100 80GB HBM3" and gpu[0].memory_mb == 80 * 1024
    assert calls == ["init", "shutdown"]

    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken))
    p = probe()
    assert not [a for a in p.accelerators if a.api == "cuda"]
    assert any("NVML present but not usable" in n for n in p.notes)
