"""The CLI on the real model and its bad-input contract: one line, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def liteinfer(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean_error(r, fragment):
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0]


def test_generate_json(default_model_path):
    r = liteinfer("generate", "-m", str(default_model_path), "-p", "The capital of France is",
                  "--max-tokens", "8", "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"]
    assert out["completion_tokens"] <= 8 and out["prompt_tokens"] > 0
    assert out["timings"]["decode_tps"] >= 0


def test_generate_streams_text(default_model_path):
    r = liteinfer("generate", "-m", str(default_model_path), "-p", "Name a fruit.", "--chat",
                  "--max-tokens", "16", "--temperature", "0.7", "--seed", "1")
    assert r.returncode == 0 and r.stdout.strip()


def test_chat_reads_turns_from_stdin(default_model_path):
    r = subprocess.run([sys.executable, "-m", "liteinfer", "chat", "-m", str(default_model_path),
                        "--temperature", "0", "--max-tokens", "24"],
                       input="What is 2+2?\n/exit\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "4" in r.stdout


def test_unknown_model_name():
    assert_clean_error(liteinfer("generate", "-m", "no-such-model", "-p", "x"), "unknown model")


def test_missing_file():
    assert_clean_error(liteinfer("generate", "-m", "/nonexistent/model.gguf", "-p", "x"), "not found")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("this is not a model")
    assert_clean_error(liteinfer("generate", "-m", str(bad), "-p", "x"), "not a GGUF")


def test_truncated_gguf(tmp_path, default_model_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(default_model_path.read_bytes()[: 5_000_000])
    r = liteinfer("generate", "-m", str(cut), "-p", "x")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "truncated" in r.stderr or "damaged" in r.stderr


def test_prompt_longer_than_context(default_model_path):
    r = liteinfer("generate", "-m", str(default_model_path), "-p", "word " * 3000, "--ctx", "512")
    assert_clean_error(r, "context holds")


def test_bad_sampling_argument(default_model_path):
    assert_clean_error(liteinfer("generate", "-m", str(default_model_path), "-p", "x", "--max-tokens", "0"),
                       "max-tokens")


def test_pull_into_fresh_cache_is_atomic(tmp_path):
    env = {"LITEINFER_HOME": str(tmp_path)}
    r = liteinfer("pull", "smollm2-135m", env=env)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.exists() and path.read_bytes()[:4] == b"GGUF"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    assert_clean_error(liteinfer("pull", "no-such-model", env=env), "unknown model")
    models = json.loads(liteinfer("models", "--json", env=env).stdout)
    assert {"name": "smollm2-135m", "cached": True}.items() <= next(
        m for m in models if m["name"] == "smollm2-135m").items()


@pytest.mark.parametrize("hub_id", ["someone/some-model"])
def test_hub_id_without_network_is_a_clean_error(hub_id, tmp_path):
    r = liteinfer("pull", hub_id, env={"LITEINFER_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.rglob("*.gguf")) == []


def test_serve_with_unknown_model_fails_before_binding():
    assert_clean_error(liteinfer("serve", "-m", "no-such-model", "--port", "1"), "unknown model")


def test_app_py_with_invalid_config_names_the_field(tmp_path):
    cfg = tmp_path / "device_config.json"
    cfg.write_text(json.dumps({"schema_version": 1, "engine": {"n_threads": 0}}))
    r = subprocess.run([sys.executable, "app.py", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert_clean_error(r, "engine.n_threads")
    cfg.write_text(json.dumps({"schema_version": 0}))
    r = subprocess.run([sys.executable, "app.py", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert_clean_error(r, "hw_profiler.py")
