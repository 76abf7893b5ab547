"""`make run` then `make test` in one checkout: the run command leaves a planned
device_config.json at the root, and doctor, bench and serve read ./device_config.json when no
--config is named. The suite must not see it: here a copy of the checkout gets a bad
device_config.json at its root and the tests that start CLI commands run there, as `make test`
runs them; their results must be the ones they have without it (all pass)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the tests that start `liteinfer doctor / bench / power / serve`, app.py and hw_profiler.py
# without --config somewhere, or with cwd at the checkout before this test existed
SELECTED = [
    "tests/test_hardware_cli.py::test_doctor_gives_concrete_advice",
    "tests/test_hardware_cli.py::test_invalid_or_stale_config_names_the_field",
    "tests/test_hardware_cli.py::test_config_from_another_machine_is_stale",
    "tests/test_hardware_cli.py::test_profile_bad_output_and_root",
    "tests/test_hostile.py::test_missing_config_file_is_an_error",
    "tests/test_power.py::test_cli_on_this_machine_is_clean",
    "tests/test_bench.py::test_bench_real_model_json",
]
# invalid (engine.n_threads 0) and planned for another machine: whoever reads it fails or warns
PLANTED = {"schema_version": 1, "engine": {"n_threads": 0},
           "device": {"fingerprint": {"cpu": "some other CPU", "logical_cores": 999}}}


def _checkout_copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc")
    for name in ("liteinfer", "tests", "docs", "examples"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("app.py", "hw_profiler.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def test_a_bad_device_config_in_the_working_directory_changes_no_test(tmp_path):
    tree = _checkout_copy(tmp_path / "checkout")
    (tree / "device_config.json").write_text(json.dumps(PLANTED))
    env = {**os.environ, "PYTHONPATH": str(tree)}

    # the plant works: a command started in that folder reads it and fails on it
    r = subprocess.run([sys.executable, "-m", "liteinfer", "doctor", "--json"], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "device_config.json: field engine.n_threads" in r.stderr, r.stderr

    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTED], cwd=tree,
                       env=env, capture_output=True, text=True, timeout=900)
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert "failed" not in r.stdout.splitlines()[-1] and " passed" in r.stdout.splitlines()[-1], tail
    assert json.loads((tree / "device_config.json").read_text()) == PLANTED  # nothing overwrote it
