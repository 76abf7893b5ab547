"""Draw docs/quantization.md's measured table as a chart: KLD against bits per weight,
liteinfer's mixed plans (with and without GPTQ) against llama.cpp's imatrix k-quant curve.

The numbers are read from the first table of the doc's "Measured" section (the tiny FP32 LM,
benchmarks/quant_report.py), so the chart shows exactly what the doc says; rerun this after
the table changes.

    python benchmarks/plot_quant.py [--doc docs/quantization.md] [-o docs/img/quant_kld.png]
    python benchmarks/plot_quant.py --curve [-o docs/img/quant_curve_smollm2.png]

--curve draws the SmolLM2-135M size-accuracy curve instead (the table of the doc's "SmolLM2-135M
size-accuracy curve" section): perplexity ratio and next-token top-1 accuracy ratio to FP32
against the file's size as a fraction of the FP32 file, llama.cpp's types against liteinfer's
mixed plans, with the targets (ppl <= x1.02, top-1 >= x0.98, at 1/8) marked.

Needs matplotlib (pip install 'liteinfer[plots]').
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from doc_tables import number, tables_after

ROOT = Path(__file__).resolve().parents[1]
# series: (legend, style, colour, rows whose variant matches)
SERIES = [
    ("llama.cpp k-quants +imatrix (the curve)", "o-", "#ff7f0e", r"^llama\.cpp q\d_k(_m)? \+imatrix$"),
    ("llama.cpp k-quants +imatrix +GPTQ (liteinfer)", "s--", "#9467bd", r"^llama\.cpp q\d_k_m \+imatrix \+GPTQ$"),
    ("liteinfer mixed (llama.cpp rounding)", "^-", "#2ca02c", r"^liteinfer mixed @"),
    ("liteinfer mixed +GPTQ", "D-", "#1f77b4", r"^liteinfer mixed \+GPTQ @"),
]
POINTS = [  # single files off the curves: (row, label, where the label goes: bpw, KLD)
    ("llama.cpp q4_0 (no imatrix)", "q4_0", (5.45, 0.0026)),
    ("llama.cpp q4_0 +imatrix", "q4_0 +imatrix", (5.45, 0.0020)),
    ("llama.cpp q4_0 +imatrix +GPTQ", "q4_0 +imatrix +GPTQ (liteinfer)", (5.45, 0.00155)),
    ("llama.cpp iq4_xs +imatrix", "iq4_xs +imatrix", (4.3, 0.0031)),
]


CURVE_SECTION = "SmolLM2-135M size-accuracy curve"
CURVE_SERIES = [  # (legend, style, colour, rows whose variant matches)
    ("llama.cpp file types +imatrix", "o-", "#ff7f0e", r"^llama\.cpp "),
    ("liteinfer --mixed (embedding and head >= 6 bits)", "^-", "#2ca02c", r"^liteinfer --mixed FP32/\d+$"),
    ("liteinfer --mixed, earlier floor (embedding >= 4 bits)", "v--", "#8c564b",
     r"^liteinfer --mixed FP32/\d+ \(embedding >= 4 bits\)$"),
    ("liteinfer --mixed +GPTQ", "D", "#1f77b4", r"^liteinfer --mixed FP32/\d+ \+GPTQ$"),  # optional
]


def _float(cell: str) -> float:
    """A table number that may be written 2.3e+11."""
    try:
        return float(cell.strip("*"))
    except ValueError:
        return number(cell)


def plot_curve(doc: str, output: str) -> int:
    tables = tables_after(Path(doc).read_text(), CURVE_SECTION)
    if not tables:
        raise SystemExit(f"no table in the '{CURVE_SECTION}' section")
    rows = {r["variant"]: (number(r["size vs FP32"].split("/")[-1]), _float(r["ppl x"]), _float(r["top-1 acc x"]))
            for r in tables[0] if r["variant"].startswith(("llama.cpp", "liteinfer"))}
    try:
        import matplotlib
    except ImportError:
        print("needs matplotlib: pip install 'liteinfer[plots]'", file=sys.stderr)
        return 1
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, style, colour, pattern in CURVE_SERIES:
        pts = sorted(v for k, v in rows.items() if re.search(pattern, k))
        if not pts and ("GPTQ" in label or "earlier" in label):
            continue
        if not pts:
            raise SystemExit(f"no rows for {label!r} in the table")
        a1.plot([p[0] for p in pts], [p[1] for p in pts], style, c=colour, label=label, ms=6)
        a2.plot([p[0] for p in pts], [p[2] for p in pts], style, c=colour, label=label, ms=6)
    for ax, y, name in ((a1, 1.02, "ppl x1.02"), (a2, 0.98, "top-1 x0.98")):
        ax.axhline(y, ls="--", c="#d62728", lw=1)
        ax.axvline(8, ls=":", c="#7f7f7f", lw=1)
        ax.annotate(f"target {name}", (4.1, y), fontsize=8, color="#d62728", va="bottom")
        ax.set_xlabel("file size: 1/N of the FP32 file (N)")
        ax.grid(alpha=0.3, which="both")
    a1.set_yscale("log")
    a1.set_ylabel("perplexity / FP32's (log scale, lower is better)")
    a2.set_ylabel("next-token top-1 accuracy / FP32's (higher is better)")
    a2.legend(fontsize=8, loc="lower left")
    fig.suptitle("SmolLM2-135M on held-out text (numbers from docs/quantization.md, "
                 "benchmarks/quant_report.py --only curve-types / curve-mixed)", fontsize=10)
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", default=str(ROOT / "docs/quantization.md"))
    ap.add_argument("-o", "--output", default=None, help="default docs/img/quant_kld.png (--curve: "
                    "docs/img/quant_curve_smollm2.png)")
    ap.add_argument("--curve", action="store_true", help="the SmolLM2-135M size-accuracy curve")
    args = ap.parse_args(argv)
    if not Path(args.doc).is_file():
        raise SystemExit(f"doc not found: {args.doc}")
    if args.curve:
        return plot_curve(args.doc, args.output or str(ROOT / "docs/img/quant_curve_smollm2.png"))
    args.output = args.output or str(ROOT / "docs/img/quant_kld.png")
    tables = tables_after(Path(args.doc).read_text(), "Measured")
    rows = {r["variant"]: (number(r["bpw"]), number(r["KLD"])) for r in tables[0]}
    try:
        import matplotlib
    except ImportError:
        print("needs matplotlib: pip install 'liteinfer[plots]'", file=sys.stderr)
        return 1
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5))
    for label, style, colour, pattern in SERIES:
        pts = sorted(v for k, v in rows.items() if re.search(pattern, k))
        if not pts:
            raise SystemExit(f"no rows for {label!r} in the table")
        ax.plot([b for b, _ in pts], [k for _, k in pts], style, c=colour, label=label, ms=6)
    for row, text, where in POINTS:
        b, k = rows[row]
        ax.plot([b], [k], "x", c="#7f7f7f", ms=8)
        ax.annotate(text, (b, k), xytext=where, fontsize=8, color="#555555", va="center",
                    arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.8})
    ax.plot([], [], "x", c="#7f7f7f", label="other single files (llama.cpp types)")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (all tensors)")
    ax.set_ylabel("KLD vs FP32 on held-out text (log scale, lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves fill the axes
    ax.set_title("tiny FP32 LM (10.2M params): KLD against size\n(numbers from docs/quantization.md, "
                 "benchmarks/quant_report.py --only tiny)", fontsize=10)
    fig.tight_layout()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
