"""Record the small /proc, /sys and /dev files the probe reads into a folder.

The folder is a fixture tree: `probe(root=folder)` reproduces this machine's probe anywhere.
That is how the test fixtures were made and how a new device is added (docs/hardware/
adding-a-device.md). Serial numbers and MAC addresses are never copied.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from liteinfer.core.files import atomic_write_bytes

# Globs relative to / ; only small text files.
FILES = [
    "proc/cpuinfo", "proc/meminfo", "proc/self/cgroup", "proc/1/cgroup", "proc/self/limits",
    "proc/device-tree/model", "proc/device-tree/compatible",
    "sys/firmware/devicetree/base/model", "sys/firmware/devicetree/base/compatible",
    "sys/class/dmi/id/sys_vendor", "sys/class/dmi/id/product_name", "sys/class/dmi/id/board_name",
    "sys/class/dmi/id/bios_vendor",
    "sys/devices/system/cpu/online", "sys/devices/system/cpu/possible", "sys/devices/system/cpu/present",
    "sys/devices/system/cpu/cpu[0-9]*/cpu_capacity",
    "sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list",
    "sys/devices/system/cpu/cpu[0-9]*/topology/core_id",
    "sys/devices/system/cpu/cpu[0-9]*/topology/cluster_id",
    "sys/devices/system/cpu/cpu[0-9]*/topology/physical_package_id",
    "sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/level",
    "sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/type",
    "sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/size",
    "sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/shared_cpu_list",
    "sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq",
    "sys/devices/system/cpu/cpufreq/policy*/scaling_available_governors",
    "sys/devices/system/cpu/cpufreq/policy*/scaling_governor",
    "sys/devices/system/cpu/cpufreq/policy*/scaling_driver",
    "sys/devices/system/cpu/cpufreq/policy*/cpuinfo_max_freq",
    "sys/devices/system/cpu/cpufreq/policy*/affected_cpus",
    "sys/fs/cgroup/cgroup.controllers", "sys/fs/cgroup/cpu.max", "sys/fs/cgroup/memory.max",
    "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "sys/fs/cgroup/cpu/cpu.cfs_period_us",
    "sys/fs/cgroup/memory/memory.limit_in_bytes",
    "proc/driver/nvidia/gpus/*/information",
    "sys/class/drm/card*/device/uevent", "sys/class/accel/accel*/device/uevent",
    "sys/module/rknpu/version", "sys/bus/pci/devices/*/vendor", "sys/bus/pci/devices/*/device",
    "sys/bus/usb/devices/*/idVendor", "sys/bus/usb/devices/*/idProduct",
    "sys/class/powercap/*/name", "sys/class/hwmon/hwmon*/name",
    "sys/class/thermal/thermal_zone*/type", "sys/class/power_supply/*/type",
    "etc/nv_tegra_release",
]
# Files whose presence matters, not their content (device nodes, sensors): recorded empty.
MARKERS = [
    "dev/dri/*", "dev/rknpu", "dev/hailo*", "dev/apex_*", "dev/nvidia[0-9]*", "dev/mali0", "dev/accel/*",
    "dev/nvgpu/igpu0/ctrl", "dev/nvhost-ctrl-gpu", "sys/class/misc/rknpu/dev", "sys/class/powercap/*/energy_uj",
    "sys/class/hwmon/hwmon*/power*_input", "sys/class/hwmon/hwmon*/energy*_input",
    "sys/class/hwmon/hwmon*/curr*_input", "/.dockerenv", "run/.containerenv",
]
TOOLS = ["vcgencmd", "nvpmodel", "tegrastats", "jetson_clocks"]
_PRIVATE = re.compile(r"^(Serial|serial)\s*:.*$", re.M)


def _nested_cgroup_files(src: Path) -> list[str]:
    """This process's own cgroup folder (nested below the mount point) holds its limits."""
    out = []
    try:
        lines = (src / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if path in ("/", ""):
            continue
        if ctrl == "":
            out += [f"sys/fs/cgroup{path}/cpu.max", f"sys/fs/cgroup{path}/memory.max"]
        elif ctrl == "memory":
            out.append(f"sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        elif "cpu" in ctrl.split(","):
            out += [f"sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us", f"sys/fs/cgroup/cpu{path}/cpu.cfs_period_us"]
    return out


def record(dest: str | Path, src: str | Path = "/") -> int:
    """Copy the probe's inputs from `src` into `dest`; returns the number of files written."""
    src, dest = Path(src), Path(dest)
    n = 0
    for pattern in FILES + _nested_cgroup_files(src):
        for path in sorted(src.glob(pattern.lstrip("/"))):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if path.name == "cpuinfo":
                data = _PRIVATE.sub("Serial\t\t: 0000000000000000", data.decode(errors="replace")).encode()
            atomic_write_bytes(dest / path.relative_to(src), data)
            n += 1
    for pattern in MARKERS:
        for path in sorted(src.glob(pattern.lstrip("/"))):
            atomic_write_bytes(dest / path.relative_to(src), b"")
            n += 1
    for tool in TOOLS:
        live = str(src) == "/"
        if (shutil.which(tool) if live else any((src / d / tool).exists() for d in ("usr/bin", "usr/sbin", "bin"))):
            atomic_write_bytes(dest / "usr/bin" / tool, b"")
            n += 1
    return n
