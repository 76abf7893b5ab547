"""Energy meters on fake powercap/hwmon trees: RAPL wrap-around, sampled power, Pi PMIC text."""

from __future__ import annotations

import time

import pytest
from _fake_sysfs import make_rapl

from liteinfer.hardware import meters

PMIC = """\
     3V7_WL_SW_A current(0)=0.00000000A
       3V3_SYS_A current(1)=0.05270000A
      1V8_SYS_A current(2)=0.16198000A
       VDD_CORE_A current(7)=0.80000000A
     3V7_WL_SW_V volt(8)=3.74259300V
       3V3_SYS_V volt(9)=3.31046500V
       1V8_SYS_V volt(10)=1.79951600V
       VDD_CORE_V volt(15)=0.72000000V
      EXT5V_V volt(24)=5.15096000V
      BATT_V volt(25)=0.00000000V
"""


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_counter_delta():
    assert meters.counter_delta(10, 25, 100) == 15
    assert meters.counter_delta(90, 5, 99) == 15  # 90..99 is 10 counts, then 0..5 is 5 more
    assert meters.counter_delta(5, 5, 99) == 0


def test_rapl_reading_and_wraparound(tmp_path):
    max_uj = 262_143_328_850
    pkg = make_rapl(tmp_path, "intel-rapl:0", max_uj - 2_000_000, max_uj)
    # A subzone (core) is already inside the package count: it must not be added again.
    sub = make_rapl(tmp_path, "intel-rapl:0:0", 0, max_uj)
    found = meters.RaplMeter.find(tmp_path)
    assert isinstance(found, meters.RaplMeter) and found.zones == [pkg]
    clock = FakeClock()
    m = meters.RaplMeter([pkg], clock=clock)
    m.start()
    (pkg / "energy_uj").write_text("3000000\n")  # wrapped: 2 J before the wrap + 1 J + 3 J after
    (sub / "energy_uj").write_text("999999999\n")
    clock.t += 2.0
    assert m.read().joules == pytest.approx(5.000001)  # running total, meter keeps going
    r = m.stop()
    assert r.joules == pytest.approx(5.000001)  # 2 J + the 0 count itself (1 µJ) + 3 J
    assert r.seconds == 2.0 and r.watts == pytest.approx(2.5, rel=1e-6)


def test_rapl_folds_multiple_wraps_when_sampled(tmp_path):
    pkg = make_rapl(tmp_path, "intel-rapl:0", 0, 999_999)  # wraps every 1 J
    m = meters.RaplMeter([pkg], clock=FakeClock())
    m.start()
    for uj in (600_000, 100_000, 700_000, 200_000):  # two wraps, seen by periodic samples
        (pkg / "energy_uj").write_text(f"{uj}")
        m.sample()
    assert m.stop().joules == pytest.approx(0.6 + 0.5 + 0.6 + 0.5)


def test_rapl_two_packages_summed(tmp_path):
    a = make_rapl(tmp_path, "intel-rapl:0", 0, 10**9)
    b = make_rapl(tmp_path, "intel-rapl:1", 0, 10**9)
    m = meters.RaplMeter.find(tmp_path)
    m.start()
    a.joinpath("energy_uj").write_text("1500000")
    b.joinpath("energy_uj").write_text("500000")
    assert m.stop().joules == pytest.approx(2.0)


def test_rapl_psys_not_double_counted(tmp_path):
    pkg = make_rapl(tmp_path, "intel-rapl:0", 0, 10**9)
    make_rapl(tmp_path, "intel-rapl:1", 0, 10**9, name="psys")  # platform: contains the package
    assert meters.RaplMeter.find(tmp_path).zones == [pkg]


def test_rapl_unreadable_is_unavailable(tmp_path):
    pkg = make_rapl(tmp_path, "intel-rapl:0", 0, 10**9)
    (pkg / "energy_uj").unlink()
    (pkg / "energy_uj").mkdir()  # reading raises an OSError even as root
    found = meters.RaplMeter.find(tmp_path)
    assert isinstance(found, str) and "unreadable" in found


def test_hwmon_energy_counter(tmp_path):
    chip = tmp_path / "class/hwmon/hwmon3"
    chip.mkdir(parents=True)
    (chip / "name").write_text("amd_energy\n")
    (chip / "energy1_input").write_text("1000000\n")
    (chip / "temp1_input").write_text("40000\n")
    (found,) = meters.HwmonMeter.find(tmp_path)
    assert found.name == "hwmon:amd_energy" and not found.sampled
    found.start()
    (chip / "energy1_input").write_text("4500000\n")
    assert found.stop().joules == pytest.approx(3.5)


def test_hwmon_power_input_is_integrated(tmp_path):
    chip = tmp_path / "class/hwmon/hwmon0"
    chip.mkdir(parents=True)
    (chip / "name").write_text("ina219\n")
    (chip / "power1_input").write_text("2500000\n")  # 2.5 W, constant
    (m,) = meters.HwmonMeter.find(tmp_path)
    assert m.sampled
    m.interval_s = 0.02
    m.start()
    time.sleep(0.2)
    r = m.stop()
    # Constant power: the trapezoids are exact over the sampled span (which ends at stop()).
    assert r.watts == pytest.approx(2.5, rel=0.1)
    assert r.joules == pytest.approx(2.5 * r.seconds, rel=0.1)


def test_pi_pmic_parse():
    watts = meters.parse_pmic(PMIC)
    expect = 0.0527 * 3.310465 + 0.16198 * 1.799516 + 0.8 * 0.72
    assert watts == pytest.approx(expect)
    assert meters.parse_pmic("garbage\n") == 0.0


def test_nothing_here_is_unavailable(tmp_path):
    found, why = meters.find_meters(tmp_path)
    assert found == [] and set(why) == {"rapl", "hwmon", "nvml", "pi-pmic"}
    assert meters.default_meter(tmp_path) is None
