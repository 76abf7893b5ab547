"""`liteinfer tune` end to end on the real engine (tiny workload), workload files, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.tune.workload import chat_mix, load_workload


def one_thread_config(tmp_path: Path) -> str:
    # The first trial is the starting config: 1 thread stays fast on a shared 2-core machine.
    cfg = DeviceConfig()
    cfg.engine.n_threads = 1
    cfg.engine.n_ctx = 1024
    path = tmp_path / "start.json"
    path.write_text(cfg.model_dump_json())
    return str(path)


def tune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liteinfer", "tune", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_tune_real_engine_writes_config_plots_and_resumes(tmp_path):
    out = tmp_path / "device_config.json"
    start = one_thread_config(tmp_path)
    r = tune("--trials", "2", "--requests", "2", "--max-tokens", "3", "--seed", "0", "--config", start, "-o", str(out))
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())
    DeviceConfig.model_validate(cfg)
    assert cfg["device"]["tuned"]["trials"] == 2 and cfg["device"]["tuned"]["metrics"]["tok_s"] > 0
    assert cfg["model"] == "smollm2-135m"  # a catalog name stays a name
    for suffix in (".front.png", ".convergence.png", ".tune.sqlite"):
        assert Path(str(out) + suffix).stat().st_size > 0
    # Resume: the same study file now holds 2 trials; asking for 3 runs one more.
    r2 = tune("--trials", "3", "--requests", "2", "--max-tokens", "3", "--seed", "0", "--config", start,
              "-o", str(out))
    assert r2.returncode == 0, r2.stderr
    assert "2 configs measured so far" in r2.stderr
    assert json.loads(out.read_text())["device"]["tuned"]["trials"] == 3
    # every trial measured the serving path (the scheduler and its controller), the same work each
    from liteinfer.tune import search

    study = search.open_study(list(search.OBJECTIVES["throughput"]), str(out) + ".tune.sqlite", "tune-throughput")
    trials = search.evaluations(study)
    assert {t.user_attrs["runner"] for t in trials} == {"scheduler"}
    assert {t.user_attrs["generated_tokens"] for t in trials} == {6}


def test_tune_bad_input_is_one_line(tmp_path):
    from liteinfer.hardware.meters import default_meter

    r = tune("-m", str(tmp_path / "missing.gguf"), "--trials", "1", "-o", str(tmp_path / "c.json"))
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "c.json").exists()
    r = tune("--max-quality-loss", "2", "-o", str(tmp_path / "c.json"))
    assert r.returncode == 1 and "--quants" in r.stderr
    if default_meter() is None:
        r = tune("--objective", "energy", "-o", str(tmp_path / "c.json"))
        assert r.returncode == 1 and "energy meter" in r.stderr


def test_workload_file(tmp_path):
    f = tmp_path / "w.jsonl"
    f.write_text('{"prompt": "Hello", "max_tokens": 5}\n\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    reqs = load_workload(f)
    assert [r.max_tokens for r in reqs] == [5, 32] and reqs[1].messages[0]["content"] == "Hi"
    f.write_text('{"prompt": 3}\n')
    with pytest.raises(LiteInferError, match="w.jsonl:1"):
        load_workload(f)
    f.write_text("not json\n")
    with pytest.raises(LiteInferError, match="not JSON"):
        load_workload(f)
    assert len(chat_mix(11)) == 11


def test_tune_quant_knob_under_quality_budget(tmp_path, default_model_path):
    # Two "formats" that are the same file: quality loss measured as 0%, budget met.
    other = tmp_path / "copy.Q4_1.gguf"
    other.symlink_to(default_model_path)
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 22))
    out = tmp_path / "dc.json"
    r = tune("-m", str(default_model_path), "--quants", str(other), "--eval-text", str(text),
             "--max-quality-loss", "1", "--objective", "multi", "--trials", "1", "--requests", "1",
             "--max-tokens", "2", "--config", one_thread_config(tmp_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "0.00%), KLD" in r.stderr
    cfg = json.loads(out.read_text())
    assert "quality_loss_pct" in cfg["device"]["tuned"]["metrics"]
    r = tune("-m", str(default_model_path), "--quants", str(other), "--max-quality-loss", "1", "-o", str(out))
    assert r.returncode == 1 and "--eval-text" in r.stderr
