"""Power in the server: `serve` applies power.profile on a fake sysfs tree and puts the previous
policy back on SIGTERM; the dynamic policy follows the load; /metrics exports energy from a
fake RAPL counter (J/token), and says "unavailable" without a meter."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from _fake_sysfs import CPUFREQ_DIR, make_policy, make_rapl, snapshot, unprivileged
from conftest import ServerProcess

from liteinfer.core.config import PowerSettings
from liteinfer.hardware import cpufreq
from liteinfer.server.power import Load, ServerPower

# SmolLM2's end-of-text tokens (<|endoftext|>, <|im_end|>) banned: every reply is max_tokens long
NO_EOS = {"0": -100, "2": -100}


def write_config(tmp_path: Path, **power) -> str:
    path = tmp_path / "device_config.json"
    path.write_text(json.dumps({"schema_version": 1, "engine": {"n_threads": 1, "n_ctx": 1024},
                                "power": power}))
    return str(path)


def scrape(srv: ServerProcess) -> str:
    return httpx.get(srv.url + "/metrics", timeout=10).text


def value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    if m is None:
        raise KeyError(name)
    return float(m.group(1))


def stream(srv: ServerProcess, max_tokens: int, on_first=None) -> None:
    """A streamed chat reply of exactly max_tokens; calls on_first() at its first chunk."""
    model = httpx.get(srv.url + "/health", timeout=10).json()["model"]
    body = {"model": model, "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": max_tokens, "stream": True, "logit_bias": NO_EOS, "temperature": 0}
    first = True
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and first:
                first = False
                if on_first:
                    on_first()


def stop_with_sigterm(srv: ServerProcess) -> str:
    srv.proc.terminate()  # SIGTERM: the drain, then exit
    out, _ = srv.proc.communicate(timeout=60)
    assert srv.proc.returncode == 0, out
    return out


def cpufreq_files(root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if k.startswith(CPUFREQ_DIR)}


def test_serve_applies_profile_meters_energy_and_restores_on_sigterm(tmp_path, default_model_path):
    root = tmp_path / "sys"
    make_policy(root, 0)
    make_policy(root, 1)
    zone = make_rapl(root, "intel-rapl:0", 1_000_000, 262_143_328_850)
    before = cpufreq_files(root)
    srv = ServerProcess("-m", str(default_model_path), "--config", write_config(tmp_path, profile="performance"),
                        "--sysfs", str(root))
    t_ready = time.monotonic()
    try:
        for p in cpufreq.read_policies(root):
            assert (p.governor, p.epp, p.max_khz) == ("performance", "performance", 3500000)
        text = scrape(srv)
        assert 'liteinfer_power_profile_info{profile="performance",state="applied"} 1.0' in text
        assert 'liteinfer_energy_meter_info{meter="rapl"} 1.0' in text
        assert value(text, "liteinfer_energy_joules_total") == 0.0
        assert math.isnan(value(text, "liteinfer_energy_joules_per_token"))  # no token yet

        zone.joinpath("energy_uj").write_text("6000000\n")  # 5 J while idle
        time.sleep(0.6)
        # 3 J more while a reply is being generated: that is the energy the tokens cost
        stream(srv, 160, on_first=lambda: zone.joinpath("energy_uj").write_text("9000000\n"))
        time.sleep(0.6)
        text = scrape(srv)
        t_scrape = time.monotonic()
        generated = value(text, "liteinfer_generated_tokens_total")
        assert generated == 160
        assert value(text, "liteinfer_energy_joules_total") == pytest.approx(8.0)
        assert value(text, "liteinfer_energy_busy_joules_total") == pytest.approx(3.0)
        assert value(text, "liteinfer_energy_joules_per_token") == pytest.approx(3.0 / 160)
        # 8 J over at least the time since /health said ready
        assert 0 < value(text, "liteinfer_power_average_watts") <= 8.0 / (t_scrape - t_ready)
    finally:
        out = stop_with_sigterm(srv)
    assert cpufreq_files(root) == before, out  # governor, EPP and max frequency put back
    assert "put back the CPU policy" in out


def test_serve_dynamic_policy_follows_load_and_restores(tmp_path, default_model_path):
    root = tmp_path / "sys"
    make_policy(root, 0, scaling_governor="performance", energy_performance_preference="performance")
    before = cpufreq_files(root)
    cfg = write_config(tmp_path, profile="dynamic", dynamic_idle_s=1.0)
    srv = ServerProcess("-m", str(default_model_path), "--config", cfg, "--sysfs", str(root))
    try:
        (p,) = cpufreq.read_policies(root)
        assert (p.governor, p.epp) == ("powersave", "power")  # idle: the low state
        seen = []
        stream(srv, 200, on_first=lambda: seen.append(_wait_for(root, "performance", 2.0)))
        assert seen == [True], "the clock did not go up under load"
        assert _wait_for(root, "powersave", 5.0), "the clock did not drop back when idle"
        text = scrape(srv)
        assert value(text, "liteinfer_power_switches_total") == 2 and value(text, "liteinfer_power_level") == 0
        assert 'liteinfer_energy_meter_info{meter="unavailable"' in text  # no meter in this tree
        assert "liteinfer_energy_joules_total" not in text
    finally:
        out = stop_with_sigterm(srv)
    assert cpufreq_files(root) == before, out


def _wait_for(root: Path, governor: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cpufreq.read_policies(root)[0].governor == governor:
            return True
        time.sleep(0.05)
    return False


def test_profile_that_does_not_apply_is_one_warning(tmp_path, caplog):
    # No cpufreq in this tree (a VM): serving goes on, one warning names the setting.
    power = ServerPower(PowerSettings(profile="performance"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="liteinfer.server"):
        power.start()
    power.close()
    assert power.state == "not applied" and "cpufreq unavailable" in power.note
    (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert rec.getMessage().startswith("power.profile=performance does not apply here: cpufreq unavailable")
    assert power.meter is None and "no RAPL zones" in power.meter_note


def test_busy_energy_counts_only_ticks_with_work(tmp_path):
    zone = make_rapl(tmp_path, "intel-rapl:0", 0, 10**12)
    load = [Load(0, 4, 0)]
    power = ServerPower(PowerSettings(), tmp_path, load=lambda: load[0])
    power.TICK_S = 3600.0  # only the polls below read the meter
    power.start()
    try:
        zone.joinpath("energy_uj").write_text("2000000\n")
        power.poll()  # idle: 2 J, not busy
        load[0] = Load(0, 4, 7)  # steps ran since the last look (and finished): busy
        zone.joinpath("energy_uj").write_text("3000000\n")
        power.poll()
        load[0] = Load(3, 4, 7)  # work waiting or running: busy
        zone.joinpath("energy_uj").write_text("3500000\n")
        power.poll()
        load[0] = Load(0, 4, 7)
        zone.joinpath("energy_uj").write_text("9500000\n")
        power.poll()
        assert (power.joules, power.busy_joules) == (pytest.approx(9.5), pytest.approx(1.5))
    finally:
        power.close()
    power.close()  # twice is fine (lifespan end, then serve's finally)


def test_serve_that_cannot_bind_puts_the_policy_back(tmp_path, default_model_path):
    root = tmp_path / "sys"
    make_policy(root, 0)
    before = cpufreq_files(root)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = subprocess.run([sys.executable, "-m", "liteinfer", "serve", "-m", str(default_model_path), "--config",
                            write_config(tmp_path, profile="performance"), "--sysfs", str(root),
                            "--port", str(busy.getsockname()[1])], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "address already in use" in r.stderr
    assert "profile performance applied" in r.stderr and "put back the CPU policy" in r.stderr
    assert cpufreq_files(root) == before


def test_profile_without_permission_changes_nothing(caplog):
    # A tree everyone may read and nobody (but root) may write; as root, the euid drops to nobody.
    root = Path(tempfile.mkdtemp(prefix="fake-sysfs-"))
    try:
        make_policy(root, 0)
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o444)
        before = snapshot(root)
        power = ServerPower(PowerSettings(profile="powersave"), root)
        with unprivileged(), caplog.at_level(logging.WARNING, logger="liteinfer.server"):
            power.start()
            power.close()
        assert power.state == "not applied" and "no permission" in power.note and snapshot(root) == before
        assert "power.profile=powersave does not apply here: no permission" in caplog.text
    finally:
        shutil.rmtree(root)
