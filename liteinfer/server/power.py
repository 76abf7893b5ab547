"""The server's side of CPU power: `power.profile` applied when `serve` starts and the previous
policy put back when it stops (SIGTERM included), the dynamic policy (low clock when idle, high
under load, with hysteresis) on a small thread, and the energy meter behind /metrics.

Everything reads and writes under `sys_root` ("/sys"; a fake tree in tests: `serve --sysfs`).
Where the machine has no cpufreq, or refuses the change, one warning line names the setting
and the server runs with the machine's policy as it is; where there is no energy meter,
/metrics says "unavailable" instead of exporting numbers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from liteinfer.core.config import PowerSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.hardware import cpufreq, meters
from liteinfer.hardware.power_policy import DynamicPolicy, PowerController, load_signal

log = logging.getLogger("liteinfer.server")


class Load(NamedTuple):
    work: int  # sequences running + requests waiting (all models)
    capacity: int  # sequences one engine step may hold
    steps: int  # engine steps so far (a change between two ticks: the engine worked)


def no_load() -> Load:
    return Load(0, 1, 0)


class ServerPower:
    TICK_S = 0.25  # load and meter sampling: the dynamic policy reacts within this

    def __init__(self, settings: PowerSettings, sys_root: str | os.PathLike = "/sys",
                 load: Callable[[], Load] = no_load) -> None:
        self.settings, self.sys_root, self._load = settings, sys_root, load
        self.state = "unchanged"  # "applied", "unchanged" (profile unchanged) or "not applied"
        self.note = ""  # why not applied
        self.controller: PowerController | None = None
        self.meter: meters.Meter | None = None
        self.meter_note = ""  # why there is no meter
        self.joules = self.busy_joules = self.seconds = 0.0
        self._saved: list[cpufreq.PolicyState] = []
        self._last_joules = 0.0
        self._last_steps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._apply_profile()
        found, why = meters.find_meters(self.sys_root)
        if found:
            self.meter = found[0]
            self.meter.start()
            log.info("power: energy meter %s", self.meter.name)
        else:
            self.meter_note = "; ".join(f"{k}: {v}" for k, v in why.items())
        if self.meter or self.controller:
            self._thread = threading.Thread(target=self._run, name="liteinfer-power", daemon=True)
            self._thread.start()

    def _apply_profile(self) -> None:
        profile = self.settings.profile
        if profile == "unchanged":
            return
        before = cpufreq.read_policies(self.sys_root)
        try:
            changes = cpufreq.set_profile(profile, self.sys_root)
        except LiteInferError as e:
            self.state, self.note = "not applied", str(e)
            log.warning("power.profile=%s does not apply here: %s; serving with the machine's policy as it is",
                        profile, e)
            return
        self._saved, self.state = before, "applied"
        if profile == "dynamic":  # set_profile put it in the idle (low) state the policy starts in
            self.controller = PowerController(DynamicPolicy(down_after_s=self.settings.dynamic_idle_s),
                                              self.sys_root)
        log.info("power: profile %s applied (%d change(s)); the previous policy is put back at exit",
                 profile, len(changes))

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            try:
                self.poll(policy=True)
            except Exception as e:  # a meter or sysfs file gone away: the server goes on without
                log.warning("power: sampling stopped: %s", e)
                return

    def poll(self, policy: bool = False) -> None:
        """Read the meter (energy since start; the part while the engine worked) and, with
        `policy`, feed the load to the dynamic policy."""
        with self._lock:
            load = self._load()
            busy = load.work > 0 or load.steps != self._last_steps
            self._last_steps = load.steps
            if self.meter is not None and not self._closed:
                r = self.meter.read()
                if busy:
                    self.busy_joules += max(0.0, r.joules - self._last_joules)
                self._last_joules, self.joules, self.seconds = r.joules, r.joules, r.seconds
            if policy and self.controller is not None and self.controller.enabled:
                self.controller.observe(load_signal(load.work, 0, load.capacity), time.monotonic())

    @property
    def level(self) -> str | None:
        return self.controller.policy.level if self.controller else None

    def close(self) -> None:
        """Stop sampling and put back the policy from before start (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.meter is not None:
            self.meter.stop()
        if self._saved:
            try:
                cpufreq.apply(cpufreq.restore_plan(self._saved))
                log.info("power: put back the CPU policy from before start")
            except LiteInferError as e:
                log.warning("power: could not put back the CPU policy from before start: %s", e)
