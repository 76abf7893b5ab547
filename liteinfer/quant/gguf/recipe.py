"""A quantization recipe: which llama.cpp type each tensor gets, and why (data, not code).

Written by `liteinfer quantize --mixed`, read back by `--recipe FILE`. Readable and diffable:
one entry per tensor with its type, its size and the measured cost that chose it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_write_text


class TensorPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    bytes: int = Field(ge=0)
    cost: float | None = Field(None, description="measured KL (or proxy error) of this tensor alone at this type")


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    ctx: int = 256
    windows: int = 0
    tokens: int = 0


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    source: str
    method: str = Field(description="sensitivity measure: kl (KL per tensor) or proxy")
    target_bpw: float | None = None
    target_bytes: int | None = None
    bpw: float = Field(description="bits per weight of the planned tensors (all tensors, llama.cpp's convention)")
    predicted_kld: float | None = Field(None, description="sum of per-tensor costs (kl method)")
    imatrix: str | None = None
    calibration: Calibration = Calibration()
    candidates: list[str] = []
    rounding: str = Field("llama.cpp", description="llama.cpp (its rounding) or gptq (codes re-chosen on its grid)")
    awq: bool = Field(False, description="planned on AWQ-scaled weights (--awq): --recipe scales the same way")
    tensors: dict[str, TensorPlan]

    def overrides(self) -> dict[str, str]:
        return {name: t.type for name, t in self.tensors.items()}


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    atomic_write_text(path, recipe.model_dump_json(indent=2) + "\n")


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise LiteInferError(f"recipe not found: {p}")
    try:
        return Recipe.model_validate(json.loads(p.read_text()))
    except ValueError as e:  # JSONDecodeError and ValidationError are both ValueErrors
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        where = f" at {'.'.join(map(str, first['loc']))}: {first['msg']}" if first else f": {e}"
        raise LiteInferError(f"{p}: not a valid recipe{where}") from None
