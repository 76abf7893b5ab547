"""Energy meters: RAPL (powercap), hwmon, NVML and the Raspberry Pi 5 PMIC.

All share one interface: `start()`, then `stop() -> Reading(joules, seconds)`. Counters
(RAPL energy_uj, hwmon energyN_input, NVML total energy) are read at both ends; meters that
only give instantaneous power (hwmon powerN_input, the Pi PMIC) are sampled on a thread and
integrated. `find_meters()` returns what this machine has; [] is a clean "unavailable".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Reading:
    joules: float
    seconds: float

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


class Meter:
    """Base: subclasses implement `_energy_j()` (a counter) or `_power_w()` (sampled)."""

    name = "meter"
    sampled = False  # True: integrate _power_w() on a thread
    interval_s = 0.1

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = 0.0
        self._e0 = 0.0
        self._joules = 0.0
        self._t_last = 0.0  # time of the last sample (sampled meters)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _energy_j(self) -> float:
        raise NotImplementedError

    def _power_w(self) -> float:
        raise NotImplementedError

    def start(self) -> None:
        self._t0 = self._clock()
        if not self.sampled:
            self._e0 = self._energy_j()
            return
        self._joules = 0.0
        self._stop.clear()
        # the first sample is taken here, not on the thread: a loaded machine may start the
        # thread late, and energy before its first sample would be missing from the span
        first = (self._t0, self._power_w())
        self._t_last = self._t0
        self._thread = threading.Thread(target=self._sample_loop, args=(first,), name=f"meter-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _sample_loop(self, first: tuple[float, float]) -> None:
        # Trapezoids between samples: exact for constant power, good for slow-changing power.
        t_prev, p_prev = first
        while True:
            stopped = self._stop.wait(self.interval_s)
            t, p = self._clock(), self._power_w()
            self._joules += (p + p_prev) / 2 * (t - t_prev)
            t_prev, p_prev = t, p
            self._t_last = t
            if stopped:
                return

    def read(self) -> Reading:
        """Energy since start() without stopping: for a running total (server /metrics)."""
        joules = self._joules if self.sampled else self._energy_j() - self._e0
        return Reading(joules=max(0.0, joules), seconds=self._clock() - self._t0)

    def stop(self) -> Reading:
        if self.sampled:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            # the integrated span: start() to the last sample, taken after the stop signal
            return Reading(joules=max(0.0, self._joules), seconds=self._t_last - self._t0)
        joules = self._energy_j() - self._e0
        return Reading(joules=max(0.0, joules), seconds=self._clock() - self._t0)


def counter_delta(start: int, end: int, max_range: int) -> int:
    """Delta of a wrapping counter that counts 0..max_range then restarts at 0."""
    if end >= start:
        return end - start
    return (max_range - start) + end + 1 if max_range > 0 else end


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


class RaplMeter(Meter):
    """Intel/AMD RAPL package energy via /sys/class/powercap/intel-rapl:N (top-level zones).

    Subzones (core, uncore, dram: intel-rapl:N:M) are inside their package's count, so only
    the package zones are summed. energy_uj wraps at max_energy_range_uj; `sample()` folds
    wraps into a running total, so call it at least once per wrap period on long runs
    (minutes at full power), which `stop()` also does.
    """

    name = "rapl"

    def __init__(self, zones: list[Path], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.zones = zones
        self._ranges = [_read_int(z / "max_energy_range_uj") for z in zones]
        self._last = [_read_int(z / "energy_uj") for z in zones]
        self._total_uj = 0

    def sample(self) -> float:
        for i, z in enumerate(self.zones):
            now = _read_int(z / "energy_uj")
            self._total_uj += counter_delta(self._last[i], now, self._ranges[i])
            self._last[i] = now
        return self._total_uj / 1e6

    _energy_j = sample

    @classmethod
    def find(cls, sys_root: str | os.PathLike = "/sys") -> RaplMeter | str:
        base = Path(sys_root, "class/powercap")
        zones = sorted(p for p in base.glob("*-rapl:*") if re.fullmatch(r"[a-z]+-rapl:\d+", p.name))
        # "psys" (laptops) is the whole platform and already contains the packages: sum
        # packages only, unless psys is all there is.
        packages = [z for z in zones if _zone_name(z) != "psys"]
        zones = packages or zones
        if not zones:
            return f"no RAPL zones under {base}"
        try:
            return cls(zones)
        except PermissionError:
            # Since Linux 5.10 (PLATYPUS) energy_uj is root-only.
            return f"RAPL present but {zones[0]}/energy_uj is not readable (root only): run as root"
        except (OSError, ValueError) as e:
            return f"RAPL unreadable: {e}"


class HwmonMeter(Meter):
    """A hwmon chip's energyN_input (µJ counter) or powerN_input/powerN_average (µW, sampled)."""

    name = "hwmon"

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.path = path
        self.energy_files = sorted(path.glob("energy*_input"))
        self.power_files = [] if self.energy_files else sorted(path.glob("power*_input")) or sorted(
            path.glob("power*_average")
        )
        self.sampled = not self.energy_files
        chip = (path / "name").read_text().strip() if (path / "name").exists() else path.name
        self.name = f"hwmon:{chip}"
        # Validate readability now so find() can report "unavailable" instead of failing later.
        self._energy_j() if self.energy_files else self._power_w()

    def _energy_j(self) -> float:
        return sum(_read_int(f) for f in self.energy_files) / 1e6

    def _power_w(self) -> float:
        return sum(_read_int(f) for f in self.power_files) / 1e6

    @classmethod
    def find(cls, sys_root: str | os.PathLike = "/sys") -> list[HwmonMeter] | str:
        base = Path(sys_root, "class/hwmon")
        meters: list[HwmonMeter] = []
        for chip in sorted(base.glob("hwmon*")):
            has = any(chip.glob("energy*_input")) or any(chip.glob("power*_input")) or any(
                chip.glob("power*_average")
            )
            if not has:
                continue
            try:
                meters.append(cls(chip))
            except (OSError, ValueError):
                continue
        return meters or f"no hwmon power or energy inputs under {base}"


class NvmlMeter(Meter):
    """NVIDIA GPU energy via NVML (pynvml): total energy counter in mJ (Volta and newer)."""

    name = "nvml"

    def __init__(self, index: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        # on use: pynvml is optional
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = f"nvml:{index}"
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError:  # older GPUs: only instantaneous power
            self.sampled = True

    def _energy_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3

    def _power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3

    @classmethod
    def find(cls) -> NvmlMeter | str:
        try:
            import pynvml  # noqa: F401
        except ImportError:
            return "pynvml not installed"
        try:
            return cls()
        except Exception as e:  # NVMLError_LibraryNotFound, no GPU, driver mismatch
            return f"NVML unavailable: {e}"


_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+\w+\(\d+\)=([-\d.]+)[AV]\s*$")


def parse_pmic(text: str) -> float:
    """Watts from `vcgencmd pmic_read_adc`: sum of current x voltage over rails with both."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return sum(a * volts[rail] for rail, a in amps.items() if rail in volts)


class PiPmicMeter(Meter):
    """Raspberry Pi 5 board power from the PMIC ADCs (`vcgencmd pmic_read_adc`), sampled."""

    name = "pi-pmic"
    sampled = True
    interval_s = 0.25  # each vcgencmd call costs a few ms

    def __init__(self, vcgencmd: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.vcgencmd = vcgencmd
        if self._power_w() <= 0:
            raise OSError("pmic_read_adc gave no current/voltage pairs (not a Pi 5?)")

    def _power_w(self) -> float:
        out = subprocess.run([self.vcgencmd, "pmic_read_adc"], capture_output=True, text=True, timeout=5)
        return parse_pmic(out.stdout)

    @classmethod
    def find(cls) -> PiPmicMeter | str:
        exe = shutil.which("vcgencmd")
        if not exe:
            return "vcgencmd not found (not a Raspberry Pi)"
        try:
            return cls(exe)
        except (OSError, subprocess.SubprocessError) as e:
            return f"vcgencmd pmic_read_adc unavailable: {e}"


def find_meters(sys_root: str | os.PathLike = "/sys") -> tuple[list[Meter], dict[str, str]]:
    """(meters found, {source: why unavailable}). The first meter is the one to use."""
    meters: list[Meter] = []
    why: dict[str, str] = {}
    for source, found in (
        ("rapl", RaplMeter.find(sys_root)),
        ("hwmon", HwmonMeter.find(sys_root)),
        ("nvml", NvmlMeter.find()),
        ("pi-pmic", PiPmicMeter.find()),
    ):
        if isinstance(found, str):
            why[source] = found
        elif isinstance(found, list):
            meters.extend(found)
        else:
            meters.append(found)
    return meters, why


def default_meter(sys_root: str | os.PathLike = "/sys") -> Meter | None:
    """The best meter here (RAPL, then hwmon, NVML, Pi PMIC), or None."""
    meters, _ = find_meters(sys_root)
    return meters[0] if meters else None
