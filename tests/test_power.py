"""Power management on fake sysfs trees: cpufreq read/set/permission/missing, policy, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _fake_sysfs import make_policy, snapshot, unprivileged

from liteinfer.core.errors import LiteInferError
from liteinfer.hardware import cpufreq
from liteinfer.hardware.power_policy import DynamicPolicy, PowerController, load_signal


def test_read_policies(tmp_path):
    make_policy(tmp_path, 0)
    make_policy(tmp_path, 1, driver="cpufreq-dt", epp=False,
                scaling_available_governors="conservative ondemand userspace powersave performance schedutil")
    pols = cpufreq.read_policies(tmp_path)
    assert [p.name for p in pols] == ["policy0", "policy1"]
    p0, p1 = pols
    assert p0.driver == "intel_pstate" and p0.governor == "powersave" and p0.epp == "balance_power"
    assert (p0.min_khz, p0.max_khz, p0.hw_max_khz, p0.cur_khz) == (800000, 2000000, 3500000, 1200000)
    assert p1.cpus == [1] and p1.epp is None and "schedutil" in p1.governors


def test_missing_tree_and_missing_files(tmp_path):
    assert cpufreq.read_policies(tmp_path) == []
    with pytest.raises(LiteInferError, match="cpufreq unavailable"):
        cpufreq.set_profile("performance", tmp_path)
    # A policy with only a governor file: reads what exists, plans only what exists.
    d = tmp_path / cpufreq.CPUFREQ_DIR / "policy0"
    d.mkdir(parents=True)
    (d / "scaling_governor").write_text("ondemand\n")
    (d / "scaling_available_governors").write_text("ondemand performance\n")
    (p,) = cpufreq.read_policies(tmp_path)
    assert p.epp is None and p.min_khz is None and p.hw_max_khz is None
    assert cpufreq.plan_profile(p, "performance") == {"scaling_governor": "performance"}
    cpufreq.set_profile("performance", tmp_path)
    assert (d / "scaling_governor").read_text() == "performance"


def test_set_profiles(tmp_path):
    make_policy(tmp_path, 0)
    make_policy(tmp_path, 1)
    changes = cpufreq.set_profile("performance", tmp_path)
    assert len(changes) == 2 * 3  # governor, max freq, EPP on both policies
    for p in cpufreq.read_policies(tmp_path):
        assert p.governor == "performance" and p.epp == "performance" and p.max_khz == 3500000
    # Idempotent: nothing more to do.
    assert cpufreq.set_profile("performance", tmp_path) == []
    cpufreq.set_profile("balanced", tmp_path)
    p = cpufreq.read_policies(tmp_path)[0]
    # intel_pstate has no schedutil: balanced is powersave + balance_performance EPP.
    assert p.governor == "powersave" and p.epp == "balance_performance"
    cpufreq.set_profile("powersave", tmp_path)
    assert cpufreq.read_policies(tmp_path)[0].epp == "power"


def test_restore_after_changes(tmp_path):
    make_policy(tmp_path, 0)
    before = snapshot(tmp_path)
    saved = cpufreq.read_policies(tmp_path)
    cpufreq.set_profile("performance", tmp_path)
    assert snapshot(tmp_path) != before
    cpufreq.apply(cpufreq.restore_plan(saved))
    assert snapshot(tmp_path) == before


def test_plan_respects_driver_and_epp_rule(tmp_path):
    d = make_policy(tmp_path, 0, driver="cpufreq-dt", epp=False,
                    scaling_available_governors="ondemand powersave performance schedutil")
    p = cpufreq.read_policy(d)
    assert cpufreq.plan_profile(p, "balanced")["scaling_governor"] == "schedutil"
    assert "energy_performance_preference" not in cpufreq.plan_profile(p, "balanced")
    with pytest.raises(LiteInferError, match="unknown power profile"):
        cpufreq.plan_profile(p, "turbo")
    # Kernel rule: with the performance governor EPP can only be "performance".
    d2 = make_policy(tmp_path, 1, scaling_governor="performance", energy_performance_preference="performance")
    plan = cpufreq.plan_profile(cpufreq.read_policy(d2), "balanced")
    assert plan["scaling_governor"] == "powersave" and plan["energy_performance_preference"] == "balance_performance"


def test_frequency_limits_validated(tmp_path):
    p = cpufreq.read_policy(make_policy(tmp_path, 0))
    assert cpufreq.set_limits(p, 1000000, 3000000) == {"scaling_min_freq": "1000000", "scaling_max_freq": "3000000"}
    with pytest.raises(LiteInferError, match="outside the hardware range"):
        cpufreq.set_limits(p, max_khz=9000000)
    with pytest.raises(LiteInferError, match="above max"):
        cpufreq.set_limits(p, 3000000, 1000000)


def test_permission_denied_changes_nothing():
    # A tree nobody can read but not write (pytest's tmp dirs are 0700 root-only).
    root = Path(tempfile.mkdtemp(prefix="fake-sysfs-"))
    try:
        make_policy(root, 0)
        make_policy(root, 1)
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o444)
        before = snapshot(root)
        with unprivileged(), pytest.raises(LiteInferError, match="no permission.*nothing changed"):
            cpufreq.set_profile("performance", root)
        assert snapshot(root) == before
        # Reading still works without permission to write.
        with unprivileged():
            assert cpufreq.read_policies(root)[0].governor == "powersave"
    finally:
        shutil.rmtree(root)


def test_failed_write_midway_rolls_back(tmp_path):
    make_policy(tmp_path, 0)
    d1 = make_policy(tmp_path, 1)
    # policy1's EPP "file" is a directory: the write fails after policy0 was already changed.
    (d1 / "energy_performance_preference").unlink()
    (d1 / "energy_performance_preference").mkdir()
    (d1 / "energy_performance_preference" / "x").write_text("")
    p1 = cpufreq.read_policy(d1)
    p1.epp = "balance_power"  # what the kernel would report
    p0 = cpufreq.read_policy(tmp_path / cpufreq.CPUFREQ_DIR / "policy0")
    plan = {p.path: cpufreq.plan_profile(p, "performance") for p in (p0, p1)}
    before = snapshot(tmp_path)
    with pytest.raises(LiteInferError, match="energy_performance_preference failed.*nothing changed"):
        cpufreq.apply(plan)
    assert snapshot(tmp_path) == before


def test_dynamic_policy_hysteresis():
    pol = DynamicPolicy(up=0.5, down=0.1, down_after_s=10)
    assert pol.update(0.0, 0) is None and pol.level == "low"
    assert pol.update(0.6, 1) == "high"  # load: up at once
    assert pol.update(0.3, 2) is None  # between thresholds: hold
    assert pol.update(0.0, 3) is None  # quiet, but not for long enough
    assert pol.update(0.0, 12) is None
    assert pol.update(0.9, 12.5) is None and pol.level == "high"  # burst resets the quiet timer
    assert pol.update(0.05, 13) is None
    assert pol.update(0.05, 22) is None
    assert pol.update(0.0, 23) == "low"
    assert load_signal(0, 0, 32) == 0.0 and load_signal(1, 0, 32) == 0.5 and load_signal(64, 0, 32) == 2.0
    with pytest.raises(ValueError):
        DynamicPolicy(up=0.1, down=0.5)


def test_power_controller_applies_and_disables(tmp_path):
    make_policy(tmp_path, 0)
    ctl = PowerController(DynamicPolicy(down_after_s=5), tmp_path)
    assert ctl.observe(load_signal(2, 1, 8), now=0) == "high"
    assert cpufreq.read_policies(tmp_path)[0].governor == "performance"
    ctl.observe(0.0, 1)
    assert ctl.observe(0.0, 7) == "low"
    p = cpufreq.read_policies(tmp_path)[0]
    assert p.governor == "powersave" and p.epp == "power" and ctl.switches == 2
    # No cpufreq at all: the controller warns once and keeps deciding without applying.
    ctl2 = PowerController(DynamicPolicy(), tmp_path / "none")
    assert ctl2.observe(1.0, 0) == "high" and not ctl2.enabled


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liteinfer", "power", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_on_this_machine_is_clean():
    st = run_cli("status")
    assert st.returncode == 0 and "unavailable" in st.stdout and "Traceback" not in st.stderr
    s = run_cli("set", "performance", "--sysfs", "/nonexistent")
    assert s.returncode == 1 and s.stderr.startswith("error: cpufreq unavailable") and "Traceback" not in s.stderr


def test_cli_on_fake_tree(tmp_path):
    make_policy(tmp_path, 0)
    st = run_cli("status", "--sysfs", str(tmp_path))
    assert st.returncode == 0 and "governor powersave" in st.stdout
    dry = run_cli("set", "performance", "--sysfs", str(tmp_path), "--dry-run")
    assert "would write policy0/scaling_governor = performance" in dry.stdout
    assert cpufreq.read_policies(tmp_path)[0].governor == "powersave"
    cfg = tmp_path / "device_config.json"
    s = run_cli("set", "dynamic", "--sysfs", str(tmp_path), "--config", str(cfg))
    assert s.returncode == 0, s.stderr
    assert '"profile": "dynamic"' in cfg.read_text()
    assert cpufreq.read_policies(tmp_path)[0].epp == "power"
