"""engines/llama_cpp_lazy.py: the server loads llama.cpp's bindings without the high-level layer."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_serving_path_leaves_numpy_and_the_high_level_package_out(default_model_path):
    """The server drives llama.cpp through the C API only: numpy, and llama-cpp-python's
    high-level layer (jinja2, diskcache, sqlite3), would be ~20 MB of its RSS for nothing.
    Asking the package for its high-level names still works, loaded on first use."""
    code = textwrap.dedent(f"""
        import sys
        from liteinfer.engines.llama import LlamaEngine, SamplingParams
        from liteinfer.scheduler.continuous import ContinuousScheduler
        import liteinfer.server.app, liteinfer.server.openai, liteinfer.server.metrics
        eng = LlamaEngine({str(default_model_path)!r})
        seq = eng.start(eng.tokenize("Hello"), SamplingParams(temperature=0, max_tokens=4))
        for _ in range(4):
            eng.step([(seq, seq.n_pending)])
        print(sorted(m for m in ("numpy", "jinja2", "diskcache", "sqlite3", "llama_cpp.llama") if m in sys.modules))
        import llama_cpp
        print(llama_cpp.Llama.__name__, llama_cpp.__version__ == llama_cpp.llama_cpp.__dict__.get("__version__",
              llama_cpp.__version__), "numpy" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["[]", "Llama True True"]
