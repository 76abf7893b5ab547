"""llama-cpp-python's ctypes bindings, loaded without the package's high-level layer (memory)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from liteinfer.core.errors import LiteInferError


def c_api() -> types.ModuleType:
    """llama-cpp-python's ctypes bindings of llama.cpp's C API, without its high-level layer.

    `import llama_cpp` runs the package's __init__, which also imports its `Llama` class and
    with it numpy, jinja2, diskcache and sqlite3: ~20 MB of a server's RSS for code liteinfer
    never calls (measured: 20.7 MB anonymous memory against 8.1 for the bindings alone). So
    the package is stood up lazily: the bindings now, the rest on first access of any other
    name (`llama_cpp.Llama`), exactly as the package's own `from .llama import *` would give."""
    pkg = sys.modules.get("llama_cpp")
    if pkg is None:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise LiteInferError("llama-cpp-python is not installed (pip install llama-cpp-python)")
        pkg = types.ModuleType("llama_cpp")
        pkg.__spec__, pkg.__file__, pkg.__path__ = spec, spec.origin, list(spec.submodule_search_locations)

        def rest_of_package(name: str):
            if name.startswith("__") and name != "__version__":
                raise AttributeError(name)
            del pkg.__getattr__  # once: what the full package has, the stand-in now has too
            full = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(full)
            pkg.__dict__.update({k: v for k, v in vars(full).items() if not k.startswith("__") or k == "__version__"})
            try:
                return pkg.__dict__[name]
            except KeyError:
                raise AttributeError(f"module 'llama_cpp' has no attribute {name!r}") from None

        pkg.__getattr__ = rest_of_package
        sys.modules["llama_cpp"] = pkg
        try:
            low = importlib.import_module("llama_cpp.llama_cpp")
        except BaseException:
            del sys.modules["llama_cpp"]
            raise
        pkg.__dict__.update({k: v for k, v in vars(low).items() if not k.startswith("_")})
    return pkg


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_tile" in f.read()
    except OSError:
        return False


def repack_buffers_safe(system_info: str | None = None, cpu_has_amx: bool | None = None) -> bool:
    """Whether llama.cpp's weight-repack buffers (`use_extra_bufts`) are safe to turn on here.

    The batched-decode crash comes from ggml's AMX buffer type alone, and ggml registers that
    type only when the build carries AMX code (compiled with AMX_INT8: the CPU backend then
    lists `AMX_INT8 = 1` in `llama_print_system_info()`) AND the CPU has AMX tiles. The
    project's builds turn AMX off (scripts/llama_cmake_flags.sh), so the repack buffers, and
    with them the Q4_1 split's repacked kernels, stay on on AMX CPUs too; only a build with
    AMX code running on an AMX CPU turns them off. Arguments are for tests: by default this
    build's system info and /proc/cpuinfo."""
    if system_info is None:
        try:
            system_info = c_api().llama_print_system_info().decode(errors="replace")
        except LiteInferError:
            return True  # no llama.cpp installed: nothing to crash
    if "AMX_INT8 = 1" not in system_info:
        return True
    return not (_cpu_has_amx() if cpu_has_amx is None else cpu_has_amx)
