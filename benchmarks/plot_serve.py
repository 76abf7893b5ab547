"""Draw docs/benchmarks.md's serve.py results as a chart: tok/s and TTFT p95, liteinfer against
llama-server and llama-cpp-python's server, on the quiet machine and with one core taken.

The numbers are read from the tables in docs/benchmarks.md (the "Latest run" table of the
quiet-machine section and the `--background-load 1` table of the busy one), so the chart
shows exactly what the doc says; rerun this after updating a table.

    python benchmarks/plot_serve.py [--doc docs/benchmarks.md] [-o docs/img/serve.png]

Needs matplotlib (pip install 'liteinfer[plots]').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from doc_tables import number, tables_after

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {  # row label in the doc -> (legend, colour)
    "liteinfer (adaptive)": ("liteinfer (adaptive)", "#1f77b4"),
    "llama-server -np 16": ("llama-server -np 16", "#ff7f0e"),
    "llama-cpp-python server": ("llama-cpp-python server", "#7f7f7f"),
}


def table_with(tables: list[list[dict[str, str]]], column: str) -> dict[str, dict[str, float]]:
    for t in tables:
        if t and column in t[0]:
            return {r[next(iter(r))]: {k: number(v) for k, v in list(r.items())[1:]} for r in t}
    raise SystemExit(f"no table with a {column!r} column")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", default=str(ROOT / "docs/benchmarks.md"))
    ap.add_argument("-o", "--output", default=str(ROOT / "docs/img/serve.png"))
    args = ap.parse_args(argv)
    text = Path(args.doc).read_text()
    quiet = table_with(tables_after(text, "benchmarks/serve.py (quiet machine"), "c=32 tok/s")
    busy = table_with(tables_after(text, "benchmarks/serve.py (busy machine"), "c=1 TTFT p95")
    try:
        import matplotlib
    except ImportError:
        print("needs matplotlib: pip install 'liteinfer[plots]'", file=sys.stderr)
        return 1
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(10, 7.4))
    levels = [1, 4, 16, 32]
    for row, (label, colour) in SERVERS.items():
        r = quiet[row]
        ax[0][0].plot(levels, [r[f"c={c} tok/s"] for c in levels], "o-", c=colour, label=label)
    ax[0][0].set_xscale("log", base=2)
    ax[0][0].set_xticks(levels, [str(c) for c in levels])
    ax[0][0].set_xlabel("concurrent clients")
    ax[0][0].set_ylabel("generated tok/s")
    ax[0][0].set_ylim(bottom=0)
    ax[0][0].set_title("quiet machine: throughput", fontsize=10)
    ax[0][0].legend(fontsize=8)

    _bars(ax[0][1], {label: [quiet[row]["TTFT p95 at c=16"]] for row, (label, _) in SERVERS.items()},
          ["16 clients"], "TTFT p95 (ms, log scale)", "quiet machine: time to first token, p95", log=True)
    _bars(ax[1][0], {label: [busy[row]["c=1 tok/s"], busy[row]["c=16 tok/s"]] for row, (label, _) in SERVERS.items()},
          ["1 client", "16 clients"], "generated tok/s", "one core taken by another job: throughput")
    _bars(ax[1][1], {label: [busy[row]["c=1 TTFT p95"], busy[row]["c=16 TTFT p95"]]
                     for row, (label, _) in SERVERS.items()},
          ["1 client", "16 clients"], "TTFT p95 (ms, log scale)", "one core taken: time to first token, p95",
          log=True)
    fig.suptitle("benchmarks/serve.py, SmolLM2-135M Q4_1, 2 vCPU, 32-token replies (numbers from "
                 "docs/benchmarks.md)", fontsize=10)
    fig.tight_layout()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


def _bars(ax, values: dict[str, list[float]], groups: list[str], ylabel: str, title: str, log: bool = False) -> None:
    width = 0.8 / len(values)
    for i, (label, vals) in enumerate(values.items()):
        colour = next(c for lab, c in SERVERS.values() if lab == label)
        xs = [g + (i - (len(values) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, vals, width, color=colour, label=label)
        ax.bar_label(bars, [f"{v:,.0f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(10, ax.get_ylim()[1] * 2)  # bars from one base (10 ms); room for the labels
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_title(title, fontsize=10)


if __name__ == "__main__":
    raise SystemExit(main())
