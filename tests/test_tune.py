"""Genetic search: finds a deterministic optimum, resumes from sqlite, Pareto front, constraints."""

from __future__ import annotations

import pytest

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.tune import search

SPACE = [
    search.Knob("engine.n_threads", (1, 2, 3, 4)),
    search.Knob("engine.n_batch", (64, 128, 256, 512)),
    search.Knob("scheduler.max_batch", (1, 2, 4, 8, 16)),
    search.Knob("engine.kv_type", ("f16", "q8_0", "q4_0")),
    search.Knob("engine.flash_attn", (True, False)),
]  # 480 configs


def toy_throughput(p: dict) -> dict:
    """A deterministic landscape shaped like the real one: threads help up to 3, batching
    helps up to 8 then hurts, q8_0 + flash attention is best. Optimum: 3, 256, 8, q8_0, True."""
    tps = 100.0
    tps *= {1: 0.55, 2: 0.9, 3: 1.0, 4: 0.8}[p["engine.n_threads"]]
    tps *= {64: 0.85, 128: 0.95, 256: 1.0, 512: 0.97}[p["engine.n_batch"]]
    tps *= {1: 0.3, 2: 0.5, 4: 0.75, 8: 1.0, 16: 0.9}[p["scheduler.max_batch"]]
    tps *= {"f16": 0.95, "q8_0": 1.0, "q4_0": 0.9}[p["engine.kv_type"]]
    tps *= 1.0 if p["engine.flash_attn"] else 0.93
    lat = 1000.0 / tps * (1 + p["scheduler.max_batch"] / 4)  # bigger batches: more waiting
    return {"tok_s": tps, "latency_p95_ms": lat, "rss_peak_mb": 200 + 10 * p["scheduler.max_batch"]}


OPT = {"engine.n_threads": 3, "engine.n_batch": 256, "scheduler.max_batch": 8, "engine.kv_type": "q8_0",
       "engine.flash_attn": True}


def test_ga_finds_the_optimum_of_a_deterministic_objective(tmp_path):
    objs = search.OBJECTIVES["throughput"]
    calls = []

    def evaluate(p):
        calls.append(p)
        return toy_throughput(p)

    study = search.open_study(objs, None, seed=0, population=8)
    search.run_search(study, SPACE, evaluate, objs, n_trials=120, progress=False)
    (best,) = search.best_trials(study, objs)
    assert best.params == OPT and best.values[0] == pytest.approx(100.0)
    assert len(calls) == 120  # a quarter of the 480 configs


def test_study_resumes_from_sqlite(tmp_path):
    objs = search.OBJECTIVES["throughput"]
    path = str(tmp_path / "resume.sqlite")
    s1 = search.open_study(objs, path, seed=0, population=6)
    assert search.run_search(s1, SPACE, toy_throughput, objs, n_trials=7, progress=False) == 7
    first_params = [t.params for t in search.evaluations(s1)]
    del s1
    # A new process would do exactly this: open the same file and name, ask for 12 in total.
    s2 = search.open_study(objs, path, seed=0, population=6)
    assert len(search.evaluations(s2)) == 7
    assert search.run_search(s2, SPACE, toy_throughput, objs, n_trials=12, progress=False) == 5
    assert [t.params for t in search.evaluations(s2)][:7] == first_params
    assert search.run_search(s2, SPACE, toy_throughput, objs, n_trials=12, progress=False) == 0
    # Same file and name with other objectives is refused with a clear message.
    with pytest.raises(LiteInferError, match="optimizes"):
        search.open_study(search.OBJECTIVES["latency"], path, seed=0)


def test_failed_trials_are_skipped_and_topped_up(tmp_path):
    objs = search.OBJECTIVES["throughput"]

    def flaky(p):
        if p["engine.kv_type"] == "q4_0":
            raise LiteInferError("llama.cpp refused this config")
        return toy_throughput(p)

    study = search.open_study(objs, None, seed=1, population=6)
    search.run_search(study, SPACE, flaky, objs, n_trials=10, progress=False)
    assert len(search.evaluations(study)) == 10
    assert all(t.params["engine.kv_type"] != "q4_0" for t in search.completed(study))


def test_multi_objective_front_is_non_dominated(tmp_path):
    objs = search.OBJECTIVES["multi"]
    study = search.open_study(objs, None, seed=2, population=8)
    search.run_search(study, SPACE, toy_throughput, objs, n_trials=40, progress=False)
    front = search.best_trials(study, objs)
    assert len(front) >= 2
    everything = search.evaluations(study)
    for f in front:  # nothing evaluated beats a front member on all three objectives
        for t in everything:
            better = (t.values[0] >= f.values[0], t.values[1] <= f.values[1], t.values[2] <= f.values[2])
            assert not (all(better) and t.values != f.values)
    chosen = search.choose(front, objs)
    assert chosen in front
    from liteinfer.tune.plots import plot_convergence, plot_front

    png = plot_front(study, objs, front, chosen, tmp_path / "front.png")
    png2 = plot_convergence(study, objs, tmp_path / "conv.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png2.stat().st_size > 1000


def test_constraints_pick_best_quality_meeting_speed():
    # The quant-format knob: the best-quality format that still meets the speed target.
    objs = [search.Objective("quality_loss_pct", "minimize")]
    formats = {"q8_0": (40.0, 0.2), "q5_1": (55.0, 1.1), "q4_1": (70.0, 3.5), "q3_k": (80.0, 9.0)}
    space = [search.Knob("model", tuple(formats))]

    def evaluate(p):
        tps, loss = formats[p["model"]]
        return {"tok_s": tps, "quality_loss_pct": loss}

    cons = search.Constraints(min_tok_s=50.0, max_quality_loss_pct=5.0)
    study = search.open_study(objs, None, seed=0, population=4)
    search.run_search(study, space, evaluate, objs, n_trials=8, constraints=cons, progress=False)
    (best,) = search.best_trials(study, objs, cons)
    assert best.params["model"] == "q5_1"


def test_apply_params_keeps_config_consistent():
    base = DeviceConfig()
    cfg = search.apply_params(base, {"engine.n_batch": 64, "engine.n_ubatch": 512, "scheduler.max_batch": 64,
                                     "engine.kv_type": "q8_0", "engine.flash_attn": False})
    assert cfg.engine.n_ubatch == 64 and cfg.engine.n_seq_max == 64
    assert cfg.engine.type_k == "q8_0" and cfg.engine.type_v == "f16"  # quantized V needs flash attention
    assert base.engine.n_batch == 512  # the base config is not modified
    space = search.default_space(2, models=["a.gguf", "b.gguf"])
    first = search.params_of(base, space)
    assert first["engine.n_threads"] == 2 and first["model"] == "a.gguf" and first["engine.kv_type"] == base.engine.type_k
    assert first["engine.split_q4_1"] is True  # None = what the server does: split
    assert search.space_size(space) == 2 * 4 * 5 * 5 * 5 * 3 * 2 * 2 * 2 * 2
