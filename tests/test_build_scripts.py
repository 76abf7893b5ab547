"""The install scripts: the llama.cpp build log filter (ninja's [n/N] lines reach the screen)
and the slim llama-cpp-python wheel (what `import llama_cpp` loads, and it loads)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = Path(os.environ.get("LITEINFER_WHEEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
              / "liteinfer" / "wheels")

# what `pip wheel -v` prints around a scikit-build-core build (recorded from a real one)
VERBOSE_LOG = """\
Processing /tmp/me/skb
  Running command Building wheel for tinyext (pyproject.toml)
  *** scikit-build-core 0.11.6 using CMake 3.25.1 (wheel)
  -- The C compiler identification is GNU 12.2.0
  -- Configuring done
  [1/6] Building C object CMakeFiles/c.dir/src/c.c.o
  [2/6] Building C object CMakeFiles/b.dir/src/b.c.o
  [6/6] Linking C shared library liba.so
  *** Installing project into wheel...
  Building wheel for tinyext (pyproject.toml) ... done
Successfully built tinyext
"""


def test_build_progress_keeps_ninja_steps_only():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "build_progress.sh")], input=VERBOSE_LOG, text=True,
                       capture_output=True, env={**os.environ, "COLUMNS": "40"})
    assert r.returncode == 0
    steps = ["[1/6] Building C object CMakeFiles/c.dir/src/c.c.o", "[2/6] Building C object CMakeFiles/b.dir/src/b.c.o",
             "[6/6] Linking C shared library liba.so", "Successfully built tinyext"]
    assert r.stdout.splitlines() == [line[:40] for line in steps]  # cut to the terminal's width
    # a build that prints no step still ends the pipe with 0 (the build's own status decides)
    assert subprocess.run(["bash", str(ROOT / "scripts" / "build_progress.sh")], input="noise\n", text=True,
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def full_wheel():
    found = sorted(WHEELS.glob("*/llama_cpp_python-*.whl"))
    if not found:
        pytest.skip(f"no llama-cpp-python wheel built in {WHEELS} (scripts/build_llama_wheel.sh)")
    return found[0]


def test_slim_wheel_loads_and_keeps_only_what_loads(full_wheel, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "slim_llama_wheel.py"), str(full_wheel),
                        str(tmp_path / "slim")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    slim = Path(r.stdout.strip())
    with zipfile.ZipFile(slim) as z:
        names = z.namelist()
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    libs = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("llama_cpp/lib/"))
    assert {"libllama.so", "libggml.so", "libggml-base.so.0", "libggml-cpu.so.0", "libllama.so.0"} <= set(libs)
    assert not [n for n in names if n.split("/")[0] in ("lib", "include", "bin")]
    assert not [n for n in libs if n.count(".") > 2]  # no libX.so.0.N.M copies
    assert sorted(line.split(",")[0] for line in record.splitlines()) == sorted(names)
    assert slim.stat().st_size < full_wheel.stat().st_size / 2
    # installed alone, it loads llama.cpp and runs its backend init
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(slim)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    code = ("import llama_cpp, pathlib; llama_cpp.llama_backend_init(); "
            "print(pathlib.Path(llama_cpp.__file__).parent.parent); print(llama_cpp.llama_print_system_info().decode())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(target) and "CPU :" in r.stdout
