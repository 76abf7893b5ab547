"""Draw docs/quantization.md's measured table as a chart: KLD against bits per weight,
liteinfer's mixed plans (with and without GPTQ) against llama.cpp's imatrix k-quant curve.

The numbers are read from the first table of the doc's "Measured" section (the tiny FP32 LM,
benchmarks/quant_report.py), so the chart shows exactly what the doc says; rerun this after
the table changes.

    python benchmarks/plot_quant.py [--doc docs/quantization.md] [-o docs/img/quant_kld.png]

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", default=str(ROOT / "docs/quantization.md"))
    ap.add_argument("-o", "--output", default=str(ROOT / "docs/img/quant_kld.png"))
    args = ap.parse_args(argv)
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
