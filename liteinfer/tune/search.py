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

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError

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
        # Q4_1 as Q4_0 + offsets: faster batches, slower single stream (engines/q4_1_split.py)
        Knob("engine.split_q4_1", (True, False)),
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
    # on use: optuna is heavy (start-up, memory)
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
    # on use: optuna is heavy (start-up, memory)
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def evaluations(study) -> list:
    """Completed trials that were really measured (repeats of a config answered from cache
    are left out)."""
    return [t for t in completed(study) if "repeat_of" not in t.user_attrs]


def _key(params: dict[str, Any], space: list[Knob]) -> str:
    return repr([params.get(k.name) for k in space])


def run_search(study, space: list[Knob], evaluate: Evaluate, objectives: list[Objective],
               n_trials: int | None = None, timeout_s: float | None = None,
               constraints: Constraints | None = None, first: dict[str, Any] | None = None,
               progress: bool = True) -> int:
    """Measure configs until the study holds n_trials evaluations (or timeout_s passes).

    On a small categorical space a genetic search proposes the same config again and again;
    a repeat is answered from the earlier measurement (recorded as a trial with
    `repeat_of`) and costs no evaluation, so n_trials counts distinct configs measured.
    A config whose evaluation raises LiteInferError (llama.cpp refuses or crashes on it) is
    recorded as failed, never retried, and the search goes on. Returns evaluations run.
    """
    # on use: optuna is heavy (start-up, memory)
    import optuna

    constraints = constraints or Constraints()
    have = len(evaluations(study))
    size = space_size(space)
    if n_trials is not None and have >= min(n_trials, size):
        return 0
    if first is not None and not study.trials:
        study.enqueue_trial(first)  # the current config is the first individual: never worse
    seen = {_key(t.params, space): t for t in evaluations(study)}
    failed = {_key(t.params, space) for t in study.trials if t.state == optuna.trial.TrialState.FAIL}

    def objective(trial):
        params = {k.name: trial.suggest_categorical(k.name, list(k.choices)) for k in space}
        key = _key(params, space)
        if key in failed:
            raise LiteInferError("this config failed before")
        if key in seen:
            earlier = seen[key]
            for name, value in earlier.user_attrs.items():
                trial.set_user_attr(name, value)
            trial.set_user_attr("repeat_of", earlier.number)
            for name, value in earlier.user_attrs.get("violations", {}).items():
                trial.set_constraint(name, value)
            return earlier.values[0] if len(objectives) == 1 else list(earlier.values)
        try:
            m = evaluate(params)
        except LiteInferError:
            failed.add(key)
            raise
        for name, value in m.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                trial.set_user_attr(name, value)
        violations = {n: (v if math.isfinite(v) else 1e9) for n, v in constraints.violations(m).items()}
        trial.set_user_attr("violations", violations)
        for name, value in violations.items():
            trial.set_constraint(name, value)
        vals = []
        for o in objectives:
            v = m.get(o.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                failed.add(key)
                raise LiteInferError(f"the measurement gave no {o.metric}")
            vals.append(float(v))
        return vals[0] if len(vals) == 1 else vals

    todo = None if n_trials is None else min(n_trials, size) - have
    bar = None
    if progress:
        # on use: tqdm is heavy (start-up, memory)
        from tqdm import tqdm

        bar = tqdm(total=todo, desc="tune", unit="eval", dynamic_ncols=True)
    ran = [0]

    def callback(study, trial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE and "repeat_of" not in trial.user_attrs:
            seen[_key(trial.params, space)] = trial
            ran[0] += 1
            if bar is not None:
                bar.update(1)
                best = best_trials(study, objectives, constraints)
                if best and len(objectives) == 1:
                    bar.set_postfix_str(f"best {objectives[0].metric}={best[0].values[0]:.4g}")
                elif best:
                    bar.set_postfix_str(f"front {len(best)}")
        # Stop at n_trials evaluations, or when every config has been seen.
        if (todo is not None and ran[0] >= todo) or len(seen) + len(failed) >= size:
            study.stop()

    try:
        # Repeats are free but not endless: at most 30 proposals per evaluation asked for.
        study.optimize(objective, n_trials=None if todo is None else 30 * todo, timeout=timeout_s,
                       callbacks=[callback], catch=(LiteInferError,), gc_after_trial=False)
    finally:
        if bar is not None:
            bar.close()
    return ran[0]


def best_trials(study, objectives: list[Objective], constraints: Constraints | None = None) -> list:
    """Feasible best: the single best trial, or the feasible Pareto front (multi-objective)."""
    trials = [t for t in evaluations(study) if all(v <= 0 for v in t.user_attrs.get("violations", {}).values())]
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
