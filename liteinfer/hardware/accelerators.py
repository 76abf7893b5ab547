"""GPUs, NPUs and TPUs: NVML, /proc/driver/nvidia, Jetson SoCs, DRM and accel device classes,
Rockchip / Hailo / Coral nodes, and their PCI/USB ids when no driver is bound.

Everything is read under `root` (a recorded fixture tree in tests); NVML is asked only when
root is "/" and `pynvml` is importable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from liteinfer.hardware.sysfs import read

# DRM kernel drivers -> (vendor, kind, name). "display" drivers do no compute.
DRM_DRIVERS = {
    "i915": ("Intel", "igpu", "Intel integrated GPU"), "xe": ("Intel", "igpu", "Intel Xe GPU"),
    "amdgpu": ("AMD", "gpu", "AMD Radeon GPU"), "radeon": ("AMD", "gpu", "AMD Radeon GPU (legacy driver)"),
    "nouveau": ("NVIDIA", "gpu", "NVIDIA GPU (nouveau)"), "nvidia": ("NVIDIA", "gpu", "NVIDIA GPU"),
    "v3d": ("Broadcom", "igpu", "Broadcom VideoCore GPU (v3d)"),
    "vc4": ("Broadcom", "display", "VideoCore display (vc4)"), "vc4-drm": ("Broadcom", "display", "VideoCore display (vc4)"),
    "panfrost": ("Arm Mali", "igpu", "Arm Mali GPU (panfrost)"), "panthor": ("Arm Mali", "igpu", "Arm Mali GPU (panthor)"),
    "lima": ("Arm Mali", "igpu", "Arm Mali-400/450 GPU (lima)"), "msm": ("Qualcomm", "igpu", "Qualcomm Adreno GPU"),
    "rockchip-drm": ("Rockchip", "display", "Rockchip display"), "tegra": ("NVIDIA", "display", "Tegra display"),
    "virtio_gpu": ("virtio", "display", "virtio GPU"), "bochs-drm": ("QEMU", "display", "QEMU display"),
    "simpledrm": ("firmware", "display", "firmware framebuffer"),
}
ACCEL_DRIVERS = {  # /sys/class/accel (the kernel's compute-accelerator class)
    "intel_vpu": ("Intel", "Intel NPU"), "amdxdna": ("AMD", "AMD XDNA NPU"),
    "rocket": ("Rockchip", "Rockchip NPU (mainline rocket driver)"),
    "habanalabs": ("Intel Habana", "Gaudi"), "qaic": ("Qualcomm", "Cloud AI 100"),
    "ethosu": ("Arm", "Ethos-U NPU"),
}
PCI_ACCELERATORS = {  # vendor id -> (vendor, kind, name)
    "0x1e60": ("Hailo", "npu", "Hailo-8/8L"),
    "0x1ac1": ("Google", "tpu", "Coral Edge TPU (PCIe)"),
}
USB_ACCELERATORS = {  # (idVendor, idProduct) -> name
    ("1a6e", "089a"): "Coral Edge TPU (USB, firmware not loaded)",
    ("18d1", "9302"): "Coral Edge TPU (USB)",
}
JETSON_SOCS = {"tegra234": "Orin (Ampere GPU)", "tegra194": "Xavier (Volta GPU)",
               "tegra210": "Nano/TX1 (Maxwell GPU)", "tegra186": "TX2 (Pascal GPU)"}



class Accelerator(BaseModel):
    kind: Literal["gpu", "igpu", "npu", "tpu", "display"]
    vendor: str
    name: str
    memory_mb: int | None = None
    node: str = ""  # device node or sysfs path it was found at
    driver: str = ""
    api: str = ""  # how liteinfer could use it: cuda, metal, vulkan, rknn, hailort, edgetpu, openvino
    usable: bool = False  # a driver is bound and the node exists


def _probe_nvml(acc: list[Accelerator], notes: list[str]) -> bool:
    try:
        import pynvml  # nvidia-ml-py; optional
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except Exception as e:  # no driver, no device: NVML raises its own error types
        notes.append(f"NVML present but not usable: {type(e).__name__}")
        return False
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20
            acc.append(Accelerator(kind="gpu", vendor="NVIDIA", name=str(name), memory_mb=mem,
                                   node=f"/dev/nvidia{i}", driver="nvidia", api="cuda", usable=True))
    finally:
        pynvml.nvmlShutdown()
    return True


def probe_accelerators(root: Path, compatible: list[str], memory_mb: int | None
                       ) -> tuple[list[Accelerator], list[str]]:
    """The accelerators found under `root`, and notes on what could not be read. `compatible` is
    the device tree's compatible list (Jetson and Rockchip SoCs); `memory_mb` the system memory
    that an integrated GPU shares."""
    live = str(root) == "/"
    acc: list[Accelerator] = []
    notes: list[str] = []
    if not (live and _probe_nvml(acc, notes)):
        for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
            kv = dict(line.split(":", 1) for line in (read(info) or "").splitlines() if ":" in line)
            acc.append(Accelerator(kind="gpu", vendor="NVIDIA", name=kv.get("Model", "NVIDIA GPU").strip(),
                                   node=str(info.parent), driver="nvidia", api="cuda",
                                   usable=(root / "dev/nvidia0").exists()))
    # Jetson: integrated GPU sharing system memory, found by the SoC's device-tree name.
    soc = next((JETSON_SOCS[s.split(",")[1]] for s in compatible
                if s.startswith("nvidia,") and s.split(",")[1] in JETSON_SOCS), None)
    if soc:
        node = next((n for n in ("dev/nvgpu/igpu0/ctrl", "dev/nvhost-ctrl-gpu", "dev/dri/renderD128")
                     if (root / n).exists()), "")
        acc.append(Accelerator(kind="igpu", vendor="NVIDIA", name=f"Jetson {soc}", node=f"/{node}" if node else "",
                               driver="nvgpu", api="cuda", usable=bool(node), memory_mb=memory_mb))
    have_nvidia = any(a.vendor == "NVIDIA" for a in acc)

    # DRM: /sys/class/drm/cardN (connectors are cardN-XXX, skipped).
    for card in sorted((root / "sys/class/drm").glob("card*")):
        if "-" in card.name:
            continue
        uevent = read(card / "device/uevent") or ""
        driver = (re.search(r"DRIVER=(\S+)", uevent) or [None, ""])[1].lower()
        vendor, kind, name = DRM_DRIVERS.get(driver, (driver or "unknown", "gpu", f"GPU ({driver or 'no driver'})"))
        if vendor == "NVIDIA" and have_nvidia:
            continue
        if driver == "rknpu":
            continue  # reported below with the NPU
        api = {"i915": "openvino", "xe": "openvino"}.get(driver, "vulkan" if kind in ("gpu", "igpu") else "")
        acc.append(Accelerator(kind=kind, vendor=vendor, name=name,
                               node=f"/dev/dri/{card.name}", driver=driver, api=api,
                               usable=(root / "dev/dri" / card.name).exists()))

    # Arm Mali with the vendor (kbase) driver: a char device, not DRM.
    if (root / "dev/mali0").exists() and not any(a.vendor == "Arm Mali" for a in acc):
        acc.append(Accelerator(kind="igpu", vendor="Arm Mali", name="Arm Mali GPU (kbase)", node="/dev/mali0",
                               driver="mali_kbase", api="opencl", usable=True))

    # Rockchip NPU: vendor kernel (rknpu, as misc or DRM device) or device tree only.
    rk_nodes = [n for n in ("dev/rknpu", "sys/class/misc/rknpu", "sys/module/rknpu") if (root / n).exists()]
    rk_drm = any("driver=rknpu" in (read(c / "device/uevent") or "").lower()
                 for c in (root / "sys/class/drm").glob("card*"))
    rk_soc = next((s.split(",")[1] for s in compatible if re.fullmatch(r"rockchip,rk35\d\ds?", s)), "")
    if rk_nodes or rk_drm or rk_soc in ("rk3588", "rk3588s", "rk3576", "rk3568", "rk3566"):
        tops = {"rk3588": 6, "rk3588s": 6, "rk3576": 6, "rk3568": 1, "rk3566": 1}.get(rk_soc)
        name = f"Rockchip {rk_soc.upper()} NPU" if rk_soc else "Rockchip NPU"
        if tops:
            name += f" ({tops} TOPS int8)"
        version = (read(root / "sys/module/rknpu/version") or "").strip()
        acc.append(Accelerator(kind="npu", vendor="Rockchip", name=name, driver=f"rknpu {version}".strip(),
                               node="/" + (rk_nodes[0] if rk_nodes else "proc/device-tree"), api="rknn",
                               usable=bool(rk_nodes or rk_drm)))

    # The kernel's accel class (Intel NPU, AMD XDNA, mainline Rockchip...).
    for node in sorted((root / "sys/class/accel").glob("accel*")):
        driver = (re.search(r"DRIVER=(\S+)", read(node / "device/uevent") or "") or [None, ""])[1]
        if driver == "rocket" and any(a.vendor == "Rockchip" and a.kind == "npu" for a in acc):
            continue
        vendor, name = ACCEL_DRIVERS.get(driver, (driver or "unknown", f"accelerator ({driver})"))
        acc.append(Accelerator(kind="npu", vendor=vendor, name=name, node=f"/dev/accel/{node.name}",
                               driver=driver, usable=(root / "dev/accel" / node.name).exists(),
                               api={"intel_vpu": "openvino", "amdxdna": "ryzen-ai"}.get(driver, "")))

    # Hailo and Coral: device nodes first, then the PCI/USB bus for boards without the driver.
    for node in sorted((root / "dev").glob("hailo*")):
        acc.append(Accelerator(kind="npu", vendor="Hailo", name="Hailo-8/8L", node=f"/dev/{node.name}",
                               driver="hailo_pci", api="hailort", usable=True))
    for node in sorted((root / "dev").glob("apex_*")):
        acc.append(Accelerator(kind="tpu", vendor="Google", name="Coral Edge TPU (PCIe)", node=f"/dev/{node.name}",
                               driver="apex", api="edgetpu", usable=True))
    for dev in sorted((root / "sys/bus/pci/devices").glob("*")):
        vid = (read(dev / "vendor") or "").strip()
        if vid in PCI_ACCELERATORS:
            vendor, kind, name = PCI_ACCELERATORS[vid]
            if not any(a.vendor == vendor for a in acc):
                acc.append(Accelerator(kind=kind, vendor=vendor, name=f"{name} (no driver)", node=str(dev)[len(str(root)):],
                                       api="hailort" if vendor == "Hailo" else "edgetpu"))
    for dev in sorted((root / "sys/bus/usb/devices").glob("*")):
        ids = ((read(dev / "idVendor") or "").strip(), (read(dev / "idProduct") or "").strip())
        if ids in USB_ACCELERATORS:
            acc.append(Accelerator(kind="tpu", vendor="Google", name=USB_ACCELERATORS[ids],
                                   node=str(dev)[len(str(root)):], api="edgetpu", usable=ids == ("18d1", "9302")))
    return acc, notes
