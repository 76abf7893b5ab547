"""`liteinfer bench` on the real default model (a few tokens), --perf, inference_benchmark.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liteinfer.bench import parse_perf_csv, perf_metrics, perf_support

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--requests", "2", "--max-tokens", "3", "--threads", "1", "--no-plots"]


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def test_bench_real_model_json():
    from liteinfer.hardware.meters import default_meter

    r = run(sys.executable, "-m", "liteinfer", "bench", *TINY, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["generated_tokens"] == 6 and m["requests"] == 2 and m["threads"] == 1
    assert m["tok_s"] > 0 and m["ttft_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"]
    assert 50 < m["rss_peak_mb"] < 4000
    if default_meter() is None:
        assert m["energy"] == "unavailable" and m["j_per_token"] is None


def test_bench_serving_path_by_default_engine_loop_on_request():
    r = run(sys.executable, "-m", "liteinfer", "bench", *TINY, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    # the scheduler with end-of-text banned: the same fixed work as the engine loop
    assert m["runner"] == "scheduler" and m["generated_tokens"] == 6 and m["steps"] >= 3
    assert m["latency_p95_ms"] >= m["ttft_p50_ms"] > 0 and 1 <= m["mean_batch"] <= 2
    r = run(sys.executable, "-m", "liteinfer", "bench", *TINY, "--runner", "engine", "--json")
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)
    assert e["runner"] == "engine" and e["generated_tokens"] == 6 and 1 <= e["mean_batch"] <= 2


def test_bench_concurrency_levels_and_plots(tmp_path):
    prefix = tmp_path / "b"
    r = run(sys.executable, "-m", "liteinfer", "bench", "--requests", "4", "--max-tokens", "4", "--threads", "1",
            "--plots", str(prefix), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["concurrency"] == 4 and [s["concurrency"] for s in m["sweep"]] == [1, 2]
    one, two = m["sweep"]
    # one client at a time: never more than one sequence in a step; every level does the same work
    assert one["mean_batch"] == 1.0 and 1.0 <= two["mean_batch"] <= 2.0
    assert one["generated_tokens"] == two["generated_tokens"] == m["generated_tokens"] == 16
    assert len(one["latency_ms"]) == 4 and all(lat >= t for lat, t in zip(one["latency_ms"], one["ttft_ms"]))
    assert m["plots"] == [str(prefix) + ".latency.png", str(prefix) + ".concurrency.png"]
    for p in m["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = run(sys.executable, "-m", "liteinfer", "bench", "--requests", "2", "--max-tokens", "2", "--threads", "1",
               "--concurrency", "1", "--no-plots")
    assert text.returncode == 0, text.stderr
    assert re.search(r"^\s+1\s+[\d.]+ .* 1\.0$", text.stdout, re.M), text.stdout  # the c=1 row
    assert "plot " not in text.stdout
    bad = run(sys.executable, "-m", "liteinfer", "bench", "--concurrency", "1,x")
    assert bad.returncode == 1 and "--concurrency" in bad.stderr


def test_bench_text_report_and_bad_config(tmp_path):
    r = run(sys.executable, "-m", "liteinfer", "bench", *TINY)
    assert r.returncode == 0, r.stderr
    for word in ("generated tok/s", "p95", "peak memory", "energy"):
        assert word in r.stdout
    bad = run(sys.executable, "-m", "liteinfer", "bench", "--config", str(tmp_path / "nope.json"))
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    (tmp_path / "broken.json").write_text('{"schema_version": 1, "engine": {"n_threads": 0}}')
    bad = run(sys.executable, "-m", "liteinfer", "bench", "--config", str(tmp_path / "broken.json"))
    assert bad.returncode == 1 and "engine.n_threads" in bad.stderr


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed")
def test_bench_perf_counts_only_the_measured_run():
    hw, _ = perf_support(shutil.which("perf"))
    r = run(sys.executable, "-m", "liteinfer", "bench", *TINY, "--perf", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    p = m["perf"]
    assert p["hardware_counters"] is hw
    if not hw:
        assert "not supported" in r.stderr and p["ipc"] is None
    else:
        assert p["ipc"] > 0 and p["cycles_per_token"] > 0
    # task-clock (a software counter, available in VMs too) counted only the workload: its CPU
    # time is at most what the run's wall time allows on all CPUs, not the model load before it.
    assert 0 < p["task_clock_ms"] <= m["seconds"] * 1000 * m["cpus"] * 1.05


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed")
def test_classic_perf_stat_over_inference_benchmark():
    r = run("perf", "stat", "-x,", "-e", "task-clock,cycles,instructions,cache-misses", "--",
            sys.executable, str(ROOT / "inference_benchmark.py"), *TINY, "--json")  # tests run in a temp cwd
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generated_tokens"] == 6
    counts = parse_perf_csv(r.stderr)
    assert counts["task-clock"] > 0 and "instructions" in counts


def test_perf_csv_parsing_and_metrics():
    text = (
        "# started on Tue\n\n"
        "4000000000,,cycles:u,2000000,100.00,,\n"
        "8000000000,,instructions:u,2000000,100.00,2.00,insn per cycle\n"
        "50000000,,cache-references,2000000,100.00,,\n"
        "5000000,,cache-misses,2000000,100.00,10.00,of all cache refs\n"
        "<not supported>,,branch-misses,0,100.00,,\n"
        "1500.5,msec,task-clock,1500500000,100.00,1.9,CPUs utilized\n"
        "200,,context-switches,1500500000,100.00,,\n"
    )
    c = parse_perf_csv(text)
    assert c["cycles"] == 4e9 and c["branch-misses"] is None and c["task-clock"] == 1500.5
    p = perf_metrics(c, tokens=100)
    assert p["ipc"] == pytest.approx(2.0) and p["cycles_per_token"] == pytest.approx(4e7)
    assert p["cache_misses_per_token"] == pytest.approx(5e4) and p["cache_miss_rate"] == pytest.approx(0.1)
    assert p["branch_misses_per_token"] is None and p["cpu_ms_per_token"] == pytest.approx(15.005)
