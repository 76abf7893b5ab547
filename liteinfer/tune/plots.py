"""PNG plots of measurements: a tuning study (the Pareto front or trial values, convergence)
and a benchmark (latency CDFs, throughput against concurrency)."""

from __future__ import annotations

import os
from pathlib import Path

from liteinfer.core.extras import require
from liteinfer.core.files import atomic_output
from liteinfer.tune.search import Objective, evaluations


def _pyplot():
    matplotlib = require("matplotlib", "plots")  # optional: the one-line `pip install 'liteinfer[plots]'`
    matplotlib.use("Agg")  # files only; no display on servers
    # on use: matplotlib is optional
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_front(study, objectives: list[Objective], front: list, chosen, path: str | os.PathLike) -> Path:
    """Multi-objective: the first two objectives, all trials grey, the front in colour.
    Single objective: value per trial."""
    plt = _pyplot()
    trials = evaluations(study)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if len(objectives) >= 2:
        x, y = objectives[1], objectives[0]
        ax.scatter([t.values[1] for t in trials], [t.values[0] for t in trials], c="#bbbbbb", s=18, label="trials")
        f = sorted(front, key=lambda t: t.values[1])
        # With more than two objectives the front is not a line in this projection: points only.
        style = "o-" if len(objectives) == 2 else "o"
        label = "Pareto front" if len(objectives) == 2 else f"Pareto front ({len(objectives)} objectives)"
        ax.plot([t.values[1] for t in f], [t.values[0] for t in f], style, c="#1f77b4", ms=5, label=label)
        if chosen is not None:
            ax.scatter([chosen.values[1]], [chosen.values[0]], marker="*", s=180, c="#d62728", zorder=5,
                       label="chosen")
        ax.set_xlabel(f"{x.metric} ({x.direction})")
        ax.set_ylabel(f"{y.metric} ({y.direction})")
    else:
        o = objectives[0]
        ax.scatter([t.number for t in trials], [t.values[0] for t in trials], c="#1f77b4", s=18, label="trials")
        if chosen is not None:
            ax.scatter([chosen.number], [chosen.values[0]], marker="*", s=180, c="#d62728", zorder=5, label="chosen")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{o.metric} ({o.direction})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("liteinfer tune: trials")
    out = Path(path)
    _save(fig, out)
    plt.close(fig)
    return out


def plot_convergence(study, objectives: list[Objective], path: str | os.PathLike) -> Path:
    """Best-so-far of each objective against the number of configs measured."""
    plt = _pyplot()
    trials = sorted(evaluations(study), key=lambda t: t.number)
    fig, axes = plt.subplots(len(objectives), 1, figsize=(6, 2.4 * len(objectives)), squeeze=False)
    for i, o in enumerate(objectives):
        best, xs, ys = None, [], []
        pick = max if o.direction == "maximize" else min
        for n, t in enumerate(trials, 1):
            best = t.values[i] if best is None else pick(best, t.values[i])
            xs.append(n)
            ys.append(best)
        ax = axes[i][0]
        ax.scatter(xs, [t.values[i] for t in trials], c="#bbbbbb", s=12)
        ax.step(xs, ys, where="post", c="#1f77b4")
        ax.set_ylabel(o.metric)
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("configs measured")
    axes[0][0].set_title("liteinfer tune: convergence (best so far)")
    out = Path(path)
    _save(fig, out)
    plt.close(fig)
    return out


def _by_concurrency(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda r: r["concurrency"])


def plot_latency_cdf(runs: list[dict], title: str, path: str | os.PathLike) -> Path:
    """TTFT and request latency as CDFs (fraction of requests done by then), one curve per
    concurrency level. `runs`: trial reports with "ttft_ms", "latency_ms", "concurrency"."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for run in _by_concurrency(runs):
        for ax, key in zip(axes, ("ttft_ms", "latency_ms"), strict=True):
            xs = sorted(run[key])
            if xs:
                ax.step([0.0, *xs], [0.0, *((i + 1) / len(xs) for i in range(len(xs)))], where="post",
                        label=f"{run['concurrency']} at a time")
    axes[0].set_xlabel("time to first token (ms)")
    axes[1].set_xlabel("request latency, arrival to last token (ms)")
    axes[0].set_ylabel("fraction of requests")
    for ax in axes:
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right", title="requests", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    _save(fig, out)
    plt.close(fig)
    return out


def plot_concurrency(runs: list[dict], title: str, path: str | os.PathLike) -> Path:
    """Generated tok/s (left axis) and TTFT p95 (right axis) against requests in flight."""
    plt = _pyplot()
    runs = _by_concurrency(runs)
    xs = [r["concurrency"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["tok_s"] for r in runs], "o-", c="#1f77b4", label="generated tok/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("requests in flight (clients, each sends its next when one ends)")
    ax.set_ylabel("generated tok/s", color="#1f77b4")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, [r["ttft_p95_ms"] for r in runs], "s--", c="#d62728", label="TTFT p95")
    ax2.set_ylabel("TTFT p95 (ms)", color="#d62728")
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    out = Path(path)
    _save(fig, out)
    plt.close(fig)
    return out
