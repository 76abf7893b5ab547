"""The docs' charts are drawn from the docs' own tables: the scripts still read them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,committed", [("plot_serve.py", "serve.png"), ("plot_quant.py", "quant_kld.png")])
def test_chart_scripts_read_the_doc_tables(tmp_path, script, committed):
    out = tmp_path / committed
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "-o", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ROOT / "docs/img" / committed).stat().st_size > 10_000  # the committed chart the doc shows
    # a doc without the tables is a one-line error, not a chart of nothing
    (tmp_path / "empty.md").write_text("# nothing\n")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--doc", str(tmp_path / "empty.md"),
                        "-o", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no section" in r.stderr and not (tmp_path / "x.png").exists()
