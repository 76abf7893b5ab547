"""The classic flow for real: hw_profiler.py -> device_config.json -> app.py, plus `doctor`
and the one-line errors for invalid or stale configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liteinfer.core.config import load_config

ROOT = Path(__file__).parent.parent
HW = Path(__file__).parent / "fixtures" / "hw"


def run(*args, timeout=300):
    # scripts by their full path; the working directory stays the suite's empty one (conftest.py)
    args = [str(ROOT / a) if a.endswith(".py") else a for a in args]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def liteinfer(*args, timeout=300):
    return run("-m", "liteinfer", *args, timeout=timeout)


def assert_clean_error(r, *fragments):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "tmp" / "device_config.json"
    t0 = time.perf_counter()
    r = run("hw_profiler.py", "-o", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    return out, r, time.perf_counter() - t0


def test_hw_profiler_quick_writes_a_loadable_config(profiled):
    out, r, seconds = profiled
    assert r.stdout.strip() == str(out)
    cfg = load_config(out)
    cores = os.cpu_count()
    assert 1 <= cfg.engine.n_threads <= cores
    assert cfg.scheduler.max_batch >= 1 and cfg.engine.n_seq_max >= cfg.scheduler.max_batch
    m = cfg.device["measurements"]
    assert m["decode_tok_s"] > 0 and m["prompt_tok_s"] > 0 and m["mem_bandwidth_gbs"] > 0
    assert m["model_bytes"] > 50e6 and m["kv_bytes_per_token_f16"] == 23040  # SmolLM2-135M
    assert cfg.device["match"]["id"]  # something in the library matched
    assert "plan:" in r.stderr and "wrote" in r.stderr
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    print(f"hw_profiler.py --quick took {seconds:.1f} s (load avg {os.getloadavg()[0]:.1f})")


def test_app_serves_with_the_profiled_config(profiled):
    import httpx
    from conftest import free_port

    out, _, _ = profiled
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--config", str(out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                       json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_profile_from_a_fixture_tree_without_measuring(tmp_path):
    out = tmp_path / "dc.json"
    r = liteinfer("profile", "--no-measure", "--root", str(HW / "orange-pi-5"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    assert cfg.engine.n_threads == 4 and cfg.device["match"]["id"] == "orange-pi-5-16gb"
    assert "big.LITTLE" not in r.stderr and "4x Cortex-A76 @2400 MHz" in r.stderr


@pytest.mark.parametrize("fixture,expected", [
    ("orange-pi-5", "taskset -c 4,5,6,7"),
    ("jetson-orin-nano", "CUDA build"),
    ("container-2cpu-4g", "cgroup memory limit 4096 MB"),
    ("raspberry-pi-5", "RLIMIT_MEMLOCK is 8 MB"),
    ("x86-vm", "no cpufreq interface"),
])
def test_doctor_gives_concrete_advice(fixture, expected, tmp_path):
    r = liteinfer("doctor", "--root", str(HW / fixture), "--config", str(tmp_path / "none.json"))
    assert_clean_error(r, "none.json: no such file")
    r = liteinfer("doctor", "--root", str(HW / fixture), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    text = " ".join(t["advice"] for t in report["advice"])
    assert expected in text
    assert all(t["see"].startswith("docs/") for t in report["advice"])


@pytest.mark.parametrize("change,field", [
    ({"engine": {"n_threads": 0}}, "field engine.n_threads"),
    ({"engine": {"threads": 2}}, "field engine.threads"),  # renamed/unknown field: stale file
    ({"scheduler": {"max_batch": "lots"}}, "field scheduler.max_batch"),
    ({"schema_version": 0}, "field schema_version"),
])
def test_invalid_or_stale_config_names_the_field(tmp_path, change, field):
    path = tmp_path / "device_config.json"
    data = {"schema_version": 1, **change}
    path.write_text(json.dumps(data))
    assert_clean_error(liteinfer("doctor", "--config", str(path)), field)
    assert_clean_error(run("app.py", "--config", str(path)), field)


def test_config_from_another_machine_is_stale(tmp_path):
    path = tmp_path / "device_config.json"
    r = liteinfer("profile", "--no-measure", "--root", str(HW / "raspberry-pi-5"), "-o", str(path))
    assert r.returncode == 0, r.stderr
    assert liteinfer("doctor", "--root", str(HW / "raspberry-pi-5"), "--config", str(path)).returncode == 0
    # a stale config is a finding, not a failure: doctor still reports the machine (exit 0)
    r = liteinfer("doctor", "--root", str(HW / "x86-vm"), "--config", str(path), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["config"] == str(path)
    assert any(s.startswith("device.fingerprint.cpu") for s in report["stale"]), report["stale"]
    first = report["advice"][0]
    assert first["topic"] == "config" and "re-run `python hw_profiler.py`" in first["advice"]
    r = liteinfer("doctor", "--root", str(HW / "x86-vm"), "--config", str(path))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "[config]" in r.stdout and "planned for another machine" in r.stdout


def test_doctor_on_a_fixture_tree_ignores_the_working_directory_config(tmp_path):
    """`make run` leaves ./device_config.json; doctor --root TREE looks at another machine and
    must not judge that tree by this machine's file (nor fail on it)."""
    (tmp_path / "device_config.json").write_text(json.dumps({"schema_version": 1, "engine": {"n_threads": 0}}))
    r = subprocess.run([sys.executable, "-m", "liteinfer", "doctor", "--root", str(HW / "x86-vm"), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"] is None
    # on this machine the same file is read, and an invalid one is an error naming the field
    r = subprocess.run([sys.executable, "-m", "liteinfer", "doctor", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert_clean_error(r, "device_config.json: field engine.n_threads")


def test_profile_bad_output_and_root(tmp_path):
    assert_clean_error(liteinfer("profile", "--no-measure", "-o", str(tmp_path)), "is a folder")
    assert_clean_error(liteinfer("profile", "--no-measure", "--root", str(tmp_path / "nope")), "no such folder")
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert_clean_error(liteinfer("doctor", "--config", str(bad)), "not valid JSON")


def test_profile_with_a_broken_model_still_plans(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    out = tmp_path / "dc.json"
    r = liteinfer("profile", "--quick", "--model", str(bad), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "engine measurement skipped" in r.stderr
    cfg = load_config(out)
    assert "error" in cfg.device["measurements"] and cfg.engine.n_threads >= 1


def _anchors(md: Path) -> set[str]:
    """GitHub heading anchors of a markdown file."""
    import re

    out = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_doctor_links_point_at_existing_sections():
    from liteinfer.hardware.probe import probe
    from liteinfer.profile.cli import SECTIONS, advice

    targets = set(SECTIONS.values())
    for fixture in ("x86-vm", "raspberry-pi-5", "jetson-orin-nano", "orange-pi-5", "container-2cpu-4g", "mac-mini-m2"):
        targets |= {t["see"] for t in advice(probe(HW / fixture), load_avg=99.0)}
    for target in sorted(targets):
        path, _, anchor = target.partition("#")
        if path == "docs/tuning.md" and not (ROOT / path).exists():
            continue  # the tuning manual is written by the tuning issue
        assert (ROOT / path).exists(), target
        if anchor:
            assert anchor in _anchors(ROOT / path), target
