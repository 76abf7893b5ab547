"""Dynamic power policy for the server: low frequency when idle, high under load.

`DynamicPolicy` is pure logic over a load signal (busy fraction, or active + queued
sequences) and a clock, so it is tested with fake signals. Hysteresis keeps it from
flapping: it goes high as soon as load crosses `up`, and back low only after load has
stayed under `down` for `down_after_s`. `PowerController` applies its decisions through
cpufreq; if the machine refuses (no permission, no cpufreq) it says so once and stops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from liteinfer.core.errors import LiteInferError
from liteinfer.hardware import cpufreq

log = logging.getLogger(__name__)
Level = Literal["low", "high"]


@dataclass
class DynamicPolicy:
    up: float = 0.5  # load at or above this: go high now (a request is waiting on us)
    down: float = 0.1  # load at or below this for down_after_s: go low
    down_after_s: float = 10.0  # long enough that a chat's think-time doesn't drop the clock
    level: Level = "low"
    _quiet_since: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.down < self.up:
            raise ValueError("need 0 <= down < up")

    def update(self, load: float, now: float) -> Level | None:
        """Feed one load sample; returns the new level when it changes, else None."""
        if load >= self.up:
            self._quiet_since = None
            return self._set("high")
        if load > self.down:  # the band between thresholds: hold the current level
            self._quiet_since = None
            return None
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since >= self.down_after_s:
            return self._set("low")
        return None

    def _set(self, level: Level) -> Level | None:
        if level == self.level:
            return None
        self.level = level
        return level


def load_signal(active: int, queued: int, max_batch: int) -> float:
    """Server load in [0, 1+]: any work at all counts as at least `up` (0.5)."""
    if active + queued == 0:
        return 0.0
    return max(0.5, (active + queued) / max(1, max_batch))


class PowerController:
    """Drives cpufreq from a DynamicPolicy: "performance" when high, "powersave" when low."""

    PROFILE = {"high": "performance", "low": "powersave"}

    def __init__(self, policy: DynamicPolicy | None = None, sys_root: str | os.PathLike = "/sys") -> None:
        self.policy = policy or DynamicPolicy()
        self.sys_root = sys_root
        self.enabled = True
        self.switches = 0

    def observe(self, load: float, now: float) -> Level | None:
        level = self.policy.update(load, now)
        if level is None or not self.enabled:
            return level
        try:
            cpufreq.set_profile(self.PROFILE[level], self.sys_root)
            self.switches += 1
        except LiteInferError as e:
            self.enabled = False  # one warning, not one per step
            log.warning("dynamic power policy disabled: %s", e)
        return level
