"""Genetic search over DeviceConfig knobs with optuna's NSGA-II sampler.

The space is data: a list of `Knob`s, each a DeviceConfig field (dotted path) and its
choices. An evaluation is any function `params -> metrics dict` (the real engine in
`liteinfer tune`, a lookup table in benchmarks, a formula in tests), so the search is
tested apart from the measurement. Objectives name metrics and directions; "multi" gives a
Pareto front. Studies live in sqlite, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from liteinfer.config import DeviceConfig
from liteinfer.errors import LiteInferError

Metrics = dict[str, Any]
Evaluate = Callable[[dict[str, Any]], Metrics]


@dataclass(frozen=True)
class Knob:
    name: str  # dotted DeviceConfig path, or "engine.kv_type" (K and V), or "model"
    choices: tuple


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"


OBJECTIVES: dict[str, list[Objective]] = {
    "throughput": [Objective("tok_s", "maximize")],
    "latency": [Objective("latency_p95_ms", "minimize")],
    "energy": [Objective("j_per_token", "minimize")],
    "multi": [Objective("tok_s", "maximize"), Objective("latency_p95_ms", "minimize"),
              Objective("rss_peak_mb", "minimize")],
}


def default_space(max_threads: int, power: bool = False, models: list[str] | None = None) -> list[Knob]:
    """The knobs `liteinfer tune` searches. Powers of two: each step is a real change."""
    threads = tuple(sorted({1, *range(2, max_threads + 1)}))
    space = [
        Knob("engine.n_threads", threads),
        Knob("engine.n_batch", (64, 128, 256, 512)),
        Knob("engine.n_ubatch", (32, 64, 128, 256, 512)),
        Knob("scheduler.max_batch", (1, 2, 4, 8, 16)),
        Knob("scheduler.prefill_chunk", (32, 64, 128, 256, 512)),
        Knob("engine.kv_type", ("f16", "q8_0", "q4_0")),
        Knob("engine.flash_attn", (True, False)),
        Knob("engine.use_mmap", (True, False)),
    ]
    if power:
        space.append(Knob("power.profile", ("performance", "balanced", "powersave")))
    if models and len(models) > 1:
        space.append(Knob("model", tuple(models)))
    return space


def space_size(space: list[Knob]) -> int:
    return math.prod(len(k.choices) for k in space)


def apply_params(cfg: DeviceConfig, params: dict[str, Any]) -> DeviceConfig:
    """A copy of cfg with params set, made consistent (ubatch <= batch, slots >= batch, ...)."""
    data = cfg.model_dump()
    for name, value in params.items():
        if name == "model":
            data["model"] = value
            continue
        if name == "engine.kv_type":
            data["engine"]["type_k"] = data["engine"]["type_v"] = value
            continue
        section, field = name.split(".", 1)
        data[section][field] = value
    e, s = data["engine"], data["scheduler"]
    e["n_ubatch"] = min(e["n_ubatch"], e["n_batch"])
    e["n_seq_max"] = max(e["n_seq_max"], s["max_batch"])
    # A quantized V cache needs flash attention; keep K quantized, V in f16 then.
    if e["flash_attn"] is False and e["type_v"] not in ("f32", "f16", "bf16"):
        e["type_v"] = "f16"
    return DeviceConfig.model_validate(data)


def params_of(cfg: DeviceConfig, space: list[Knob]) -> dict[str, Any]:
    """The current config's values for the knobs (snapped to a choice) - the first trial."""
    out = {}
    for k in space:
        if k.name == "model":
            v = cfg.model
        elif k.name == "engine.kv_type":
            v = cfg.engine.type_k
        else:
            section, field = k.name.split(".", 1)
            v = getattr(getattr(cfg, section), field)
        if v is None and k.name == "engine.n_threads":
            v = max(k.choices)  # None = all usable cores, the largest choice
        if v not in k.choices:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and all(
                isinstance(c, (int, float)) for c in k.choices
            ):
                v = min(k.choices, key=lambda c: abs(c - v))
            else:
                v = k.choices[0]
        out[k.name] = v
    return out


@dataclass
class Constraints:
    """Feasibility: a trial that misses these is never chosen (NSGA-II ranks it behind)."""

    min_tok_s: float | None = None  # --target-tps
    max_quality_loss_pct: float | None = None  # --max-quality-loss

    def violations(self, m: Metrics) -> dict[str, float]:
        """{name: amount}; <= 0 means satisfied (optuna's convention)."""
        out = {}
        if self.min_tok_s is not None:
            out["target_tps"] = self.min_tok_s - m.get("tok_s", 0.0)
        if self.max_quality_loss_pct is not None:
            out["max_quality_loss"] = m.get("quality_loss_pct", math.inf) - self.max_quality_loss_pct
        return out

    def ok(self, m: Metrics) -> bool:
        return all(v <= 0 for v in self.violations(m).values())


def open_study(objectives: list[Objective], storage: str | None = None, name: str = "liteinfer-tune",
               seed: int | None = None, population: int = 8):
    """Create or resume (same storage + name) a study with the NSGA-II sampler.

    Constraints reach the sampler through trial.set_constraint (constrained domination:
    a feasible trial always ranks ahead of an infeasible one).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    url = f"sqlite:///{storage}" if storage and "://" not in storage else storage
    try:
        study = optuna.create_study(study_name=name, storage=url, sampler=sampler, load_if_exists=True,
                                    directions=[o.direction for o in objectives])
    except ValueError as e:  # resumed with other objectives
        raise LiteInferError(f"study {name!r} in {storage}: {e}") from None
    stored = study.user_attrs.get("objectives")
    mine = [o.metric for o in objectives]
    if stored is None:
        study.set_user_attr("objectives", mine)
    elif stored != mine:
        raise LiteInferError(f"study {name!r} in {storage} optimizes {stored}, not {mine}: use another --study")
    return study


def completed(study) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def run_search(study, space: list[Knob], evaluate: Evaluate, objectives: list[Objective],
               n_trials: int | None = None, timeout_s: float | None = None,
               constraints: Constraints | None = None, first: dict[str, Any] | None = None,
               progress: bool = True) -> int:
    """Run trials until the study holds n_trials complete ones (or timeout_s passes).

    Returns how many trials this call ran. A trial whose evaluation raises LiteInferError
    (a config llama.cpp refuses or crashes on) is recorded as failed and the search goes on.
    """
    constraints = constraints or Constraints()
    have = len(completed(study))
    if n_trials is not None and have >= n_trials:
        return 0
    if first is not None and not study.trials:
        study.enqueue_trial(first)  # the current config is the first individual: never worse

    def objective(trial):
        params = {k.name: trial.suggest_categorical(k.name, list(k.choices)) for k in space}
        m = evaluate(params)
        for key, value in m.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                trial.set_user_attr(key, value)
        violations = constraints.violations(m)
        trial.set_user_attr("violations", list(violations.values()))
        for key, value in violations.items():
            trial.set_constraint(key, value if math.isfinite(value) else 1e9)
        vals = []
        for o in objectives:
            v = m.get(o.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise LiteInferError(f"the measurement gave no {o.metric}")
            vals.append(float(v))
        return vals[0] if len(vals) == 1 else vals

    todo = None if n_trials is None else n_trials - have
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=todo, desc="tune", unit="trial", dynamic_ncols=True)
    ran = [0]

    def callback(study, trial) -> None:
        ran[0] += 1
        if bar is not None:
            bar.update(1)
            best = best_trials(study, objectives, constraints)
            if best and len(objectives) == 1:
                bar.set_postfix_str(f"best {objectives[0].metric}={best[0].values[0]:.4g}")
            elif best:
                bar.set_postfix_str(f"front {len(best)}")
        # Failed trials don't count: stop once the study holds n_trials complete ones.
        if n_trials is not None and len(completed(study)) >= n_trials:
            study.stop()

    try:
        # Up to 3x attempts, so a run of configs llama.cpp refuses can't loop forever.
        study.optimize(objective, n_trials=None if todo is None else 3 * todo, timeout=timeout_s,
                       callbacks=[callback], catch=(LiteInferError,), gc_after_trial=False)
    finally:
        if bar is not None:
            bar.close()
    return ran[0]


def best_trials(study, objectives: list[Objective], constraints: Constraints | None = None) -> list:
    """Feasible best: the single best trial, or the feasible Pareto front (multi-objective)."""
    trials = [t for t in completed(study) if all(v <= 0 for v in t.user_attrs.get("violations", []))]
    if not trials:
        return []
    sign = [1 if o.direction == "minimize" else -1 for o in objectives]
    if len(objectives) == 1:
        return [min(trials, key=lambda t: sign[0] * t.values[0])]
    return pareto(trials, sign)


def pareto(trials: list, sign: list[int]) -> list:
    keys = [[s * v for s, v in zip(sign, t.values, strict=True)] for t in trials]

    def dominated(i: int) -> bool:
        return any(all(a <= b for a, b in zip(keys[j], keys[i], strict=True)) and keys[j] != keys[i]
                   for j in range(len(trials)))

    return [t for i, t in enumerate(trials) if not dominated(i)]


def choose(front: list, objectives: list[Objective]):
    """One trial from the front: closest to the ideal point, each objective scaled to [0, 1]."""
    if len(front) == 1:
        return front[0]
    sign = [1 if o.direction == "minimize" else -1 for o in objectives]
    cols = list(zip(*[[s * v for s, v in zip(sign, t.values, strict=True)] for t in front], strict=True))
    lo = [min(c) for c in cols]
    span = [(max(c) - min(c)) or 1.0 for c in cols]

    def dist(t) -> float:
        return math.sqrt(sum(((s * v - lo[i]) / span[i]) ** 2 for i, (s, v) in enumerate(zip(sign, t.values,
                                                                                              strict=True))))

    return min(front, key=dist)
