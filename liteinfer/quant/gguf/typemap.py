"""The per-layer type map of a mixed-precision recipe: which type each block's tensors got.

`format_type_map` is a text grid (one row per block, one column per tensor role), written
beside the quantized model by `quantize --mixed` as OUT.typemap.txt; `plot_type_map` draws
the same grid as a PNG, cells coloured by bits per weight (matplotlib, the `plots` extra).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from liteinfer.core.files import atomic_output, atomic_write_text
from liteinfer.quant.gguf.quantize import bits_per_weight
from liteinfer.quant.gguf.recipe import Recipe

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight)?$")
# llama-family roles in the order a block computes them; others follow alphabetically
ROLE_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def layer_grid(recipe: Recipe) -> tuple[list[str], dict[int, dict[str, str]], dict[str, str]]:
    """(roles, {block: {role: type}}, {other tensor: type}) from the recipe's tensor plans."""
    blocks: dict[int, dict[str, str]] = {}
    other: dict[str, str] = {}
    for name, plan in recipe.tensors.items():
        m = _BLOCK.match(name)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = plan.type
        else:
            other[name.removesuffix(".weight")] = plan.type
    seen = {role for row in blocks.values() for role in row}
    roles = [r for r in ROLE_ORDER if r in seen] + sorted(seen - set(ROLE_ORDER))
    return roles, dict(sorted(blocks.items())), dict(sorted(other.items()))


def format_type_map(recipe: Recipe) -> str:
    roles, blocks, other = layer_grid(recipe)
    width = max([len(r) for r in roles] + [len(t) for row in blocks.values() for t in row.values()] + [4])
    lines = [f"per-layer types: {Path(recipe.source).name} -> {recipe.bpw:.3f} bpw ({recipe.method}; "
             f"- = not quantized by the recipe)",
             "block " + " ".join(r.rjust(width) for r in roles)]
    for i, row in blocks.items():
        lines.append(f"{i:>5} " + " ".join(row.get(r, "-").rjust(width) for r in roles))
    if other:
        lines.append("other  " + ", ".join(f"{n} {t}" for n, t in other.items()))
    counts: dict[str, int] = {}
    for plan in recipe.tensors.values():
        counts[plan.type] = counts.get(plan.type, 0) + 1
    lines.append("tensors " + ", ".join(f"{t} x {n}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines) + "\n"


def write_type_map(recipe: Recipe, path: str | os.PathLike) -> Path:
    out = Path(path)
    atomic_write_text(out, format_type_map(recipe))
    return out


def plot_type_map(recipe: Recipe, path: str | os.PathLike) -> Path:
    """The grid as a PNG: blocks down, roles across, colour = bits per weight, type in the cell."""
    # on use: matplotlib is optional (the plots extra)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    # on use: matplotlib is optional
    import matplotlib.pyplot as plt

    roles, blocks, other = layer_grid(recipe)
    rows = list(blocks)
    bits = [[bits_per_weight(blocks[i][r]) if r in blocks[i] else float("nan") for r in roles] for i in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(roles) + 2.2, 0.24 * len(rows) + 1.6))
    im = ax.imshow(bits, aspect="auto", cmap="viridis")
    for y, i in enumerate(rows):
        for x, r in enumerate(roles):
            if r in blocks[i]:
                b = bits[y][x]
                ax.text(x, y, blocks[i][r], ha="center", va="center", fontsize=6.5,
                        color="white" if b < (im.norm.vmin + im.norm.vmax) / 2 else "black")
    ax.set_xticks(range(len(roles)), roles, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(i) for i in rows], fontsize=6.5)
    ax.set_ylabel("block")
    fig.colorbar(im, ax=ax, label="bits per weight", fraction=0.05)
    extra = ", ".join(f"{n} {t}" for n, t in other.items())
    ax.set_title(f"{Path(recipe.source).name}: {recipe.bpw:.3f} bpw ({recipe.method})"
                 + (f"\n{extra}" if extra else ""), fontsize=8.5)
    out = Path(path)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
