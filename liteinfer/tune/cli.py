"""`liteinfer tune`: genetic search for this machine's best config, measured on the serving path
(the scheduler and its controller on the real engine; tune/trial.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from liteinfer.core.errors import LiteInferError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the config knobs for this machine (NSGA-II, real measurements)")
    p.add_argument("-m", "--model", default=None, help="model name or GGUF path (default: the config's model)")
    p.add_argument("--objective", choices=["throughput", "latency", "energy", "multi"], default="throughput")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--trials", type=int, default=None, help="run until the study has N complete trials (default 20)")
    g.add_argument("--minutes", type=float, default=None, help="search for this long instead")
    p.add_argument("--study", default=None, metavar="SQLITE",
                   help="sqlite file holding the study; an interrupted search resumes from it "
                        "(default: <output>.tune.sqlite)")
    p.add_argument("--study-name", default=None, help="name of the study inside the file (default: from the objective)")
    p.add_argument("--config", default=None, help="start from this device_config.json (default: the output file)")
    p.add_argument("-o", "--output", default="device_config.json", help="where the chosen config is written")
    p.add_argument("--workload", default=None, metavar="JSONL",
                   help="requests to measure with (default: built-in chat mix)")
    p.add_argument("--requests", type=int, default=8, help="requests in the built-in chat mix")
    p.add_argument("--max-tokens", type=int, default=None, help="override each request's max_tokens")
    p.add_argument("--runner", choices=["scheduler", "engine"], default="scheduler",
                   help="scheduler: the serving path, continuous batching + the adaptive controller "
                        "(default); engine: the engine-only loop, for kernel questions")
    p.add_argument("--quants", nargs="+", default=None, metavar="GGUF",
                   help="other quantizations of the model to search over (-m is the quality reference)")
    p.add_argument("--max-quality-loss", type=float, default=None, metavar="PCT",
                   help="perplexity increase allowed vs -m, in percent (needs --quants and --eval-text)")
    p.add_argument("--target-tps", type=float, default=None, help="required generated tokens/s")
    p.add_argument("--eval-text", default=None, help="held-out text for the quality measurement")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (reproducible search)")
    p.add_argument("--population", type=int, default=8, help="NSGA-II population size")
    p.add_argument("--plots", default=None, metavar="PREFIX",
                   help="PNG plot prefix (default: beside the output: <output>.front.png, .convergence.png)")
    p.add_argument("--dry-run", action="store_true", help="search and report, but do not write the config")
    p.set_defaults(func=cmd_tune)


def _quality(models: list[str], text_path: str | None) -> dict[str, float]:
    """Perplexity increase (percent) of each model vs the first, measured on held-out text."""
    if not text_path:
        raise LiteInferError("--quants needs --eval-text FILE (held-out text for the quality measurement)")
    # on use: keeps `liteinfer --help` fast
    from liteinfer.core.catalog import resolve_llm

    # on use: keeps `liteinfer --help` fast
    from liteinfer.evaluate.llm import Reference, read_text

    ref = Reference(resolve_llm(models[0]), read_text(text_path))
    out = {models[0]: 0.0}
    for m in models[1:]:
        r = ref.compare(resolve_llm(m))
        out[m] = (r["ppl_ratio"] - 1.0) * 100
        print(f"quality: {Path(m).name}: perplexity {r['ppl']:.3f} vs {r['ppl_ref']:.3f} "
              f"({out[m]:+.2f}%), KLD {r['kld']:.4f}", file=sys.stderr)
    return out


def cmd_tune(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.core.catalog import resolve_llm

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.core.config import load_config, save_config

    # on use: keeps `liteinfer --help` fast
    from liteinfer.hardware import cpufreq, meters

    # on use: keeps `liteinfer --help` fast
    from liteinfer.hardware.cores import usable_cores

    # on use: keeps `liteinfer --help` fast
    from liteinfer.tune import search

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.tune.trial import measure_isolated

    # on use: keeps `liteinfer --help` fast
    from liteinfer.tune.workload import chat_mix, load_workload

    out = Path(args.output)
    base = load_config(args.config or out)
    model = args.model or base.model  # kept as given (a catalog name stays a name)
    models = [model] + list(args.quants or [])
    for m in models:
        resolve_llm(m)  # fail early, with the catalog's message, on a missing model
    if (args.max_quality_loss is not None) and not args.quants:
        raise LiteInferError("--max-quality-loss needs --quants (the formats to choose from)")
    if args.trials is not None and args.trials < 1:
        raise LiteInferError("--trials must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        raise LiteInferError("--minutes must be positive")
    n_trials = args.trials if args.trials is not None else (None if args.minutes else 20)

    have_meter = meters.default_meter() is not None
    objectives = list(search.OBJECTIVES[args.objective])
    if args.objective == "energy" and not have_meter:
        raise LiteInferError("--objective energy needs an energy meter and this machine has none "
                             "(see `liteinfer power status`); use throughput, latency or multi")
    if args.objective == "multi":
        if have_meter:
            objectives.append(search.Objective("j_per_token", "minimize"))
        if args.quants:
            objectives.append(search.Objective("quality_loss_pct", "minimize"))

    requests = load_workload(args.workload) if args.workload else chat_mix(args.requests, args.max_tokens)
    if args.workload and args.max_tokens:
        for r in requests:
            r.max_tokens = args.max_tokens
    can_power = bool(cpufreq.read_policies()) and _can_set_power()
    space = search.default_space(usable_cores(), power=can_power, models=models)
    quality = _quality(models, args.eval_text) if args.quants else {}
    constraints = search.Constraints(min_tok_s=args.target_tps, max_quality_loss_pct=args.max_quality_loss)

    base.model = model

    def evaluate(params: dict) -> dict:
        cfg = search.apply_params(base, params)
        m = measure_isolated(resolve_llm(cfg.model), cfg, requests, runner=args.runner)
        if quality:
            m["quality_loss_pct"] = quality[cfg.model]
        return m

    study_path = args.study or str(out) + ".tune.sqlite"
    name = args.study_name or f"tune-{args.objective}"
    study = search.open_study(objectives, study_path, name, seed=args.seed, population=args.population)
    print(f"tune: {len(space)} knobs, {search.space_size(space)} configs; objective "
          f"{', '.join(f'{o.direction} {o.metric}' for o in objectives)}; study {study_path} ({name}, "
          f"{len(search.evaluations(study))} configs measured so far)", file=sys.stderr)
    print("tune: each trial loads the model and runs the workload in a child process; timings are noisy "
          "when other work runs on this machine", file=sys.stderr)
    saved_power = cpufreq.read_policies() if can_power else []
    try:
        search.run_search(study, space, evaluate, objectives, n_trials=n_trials,
                          timeout_s=args.minutes * 60 if args.minutes else None, constraints=constraints,
                          first=search.params_of(base, space), progress=sys.stderr.isatty())
    finally:
        if saved_power:  # trials switched power profiles: put the machine back as it was
            cpufreq.apply(cpufreq.restore_plan(saved_power))

    front = search.best_trials(study, objectives, constraints)
    if not front:
        raise LiteInferError("no trial met the constraints (--target-tps / --max-quality-loss); nothing written")
    chosen = search.choose(front, objectives)
    params = {k.name: chosen.params[k.name] for k in space if k.name in chosen.params}
    _report(front, chosen, objectives, space)

    prefix = args.plots or str(out)
    try:
        # on use: pulls in pydantic (start-up, memory)
        from liteinfer.tune.plots import plot_convergence, plot_front

        p1 = plot_front(study, objectives, front, chosen, prefix + ".front.png")
        p2 = plot_convergence(study, objectives, prefix + ".convergence.png")
        print(f"plots: {p1}, {p2}")
    except ImportError as e:
        print(f"plots skipped: {e.name} not installed", file=sys.stderr)

    if args.dry_run:
        return 0
    cfg = search.apply_params(base, params)
    cfg.device["tuned"] = {
        "objective": args.objective,
        "trials": len(search.evaluations(study)),
        "metrics": {o.metric: chosen.values[i] for i, o in enumerate(objectives)},
        "study": study_path,
    }
    save_config(cfg, out)
    print(f"wrote {out}")
    return 0


def _can_set_power() -> bool:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.hardware import cpufreq

    pols = cpufreq.read_policies()
    gov = pols[0].path / "scaling_governor" if pols else None
    return bool(gov and os.access(gov, os.W_OK))


def _report(front: list, chosen, objectives, space) -> None:
    metrics = [o.metric for o in objectives]
    print(f"{'trial':>5}  " + "  ".join(f"{m:>16}" for m in metrics) + "  config")
    for t in sorted(front, key=lambda t: t.number):
        mark = "*" if t is chosen else " "
        knobs = " ".join(f"{k.name.split('.')[-1]}={t.params.get(k.name)}" for k in space
                         if k.name != "model") + (f" model={Path(t.params['model']).name}" if "model" in t.params else "")
        print(f"{t.number:>4}{mark}  " + "  ".join(f"{v:>16.4g}" for v in t.values) + f"  {knobs}")
