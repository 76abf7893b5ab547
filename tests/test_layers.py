"""The layering in docs/architecture.md holds: import-linter's contracts (pyproject.toml) pass on
the tree and fail on a planted wrong-way import, and every import left inside a function says
why it is there (start-up time, memory, an optional package), so none hides a cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy in `tree` is analysed, not the installed (editable) package.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_layer_contracts_hold_and_catch_a_wrong_way_import(tmp_path):
    shutil.copytree(ROOT / "liteinfer", tmp_path / "liteinfer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    clean = _lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-2000:]
    assert "0 broken" in clean.stdout

    # An engine reaching up into the server, inside a function (a lazy import is still an edge).
    planted = tmp_path / "liteinfer/engines/text_stream.py"
    planted.write_text(planted.read_text() + "\n\ndef _wrong_way():\n    import liteinfer.server.app  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "liteinfer.engines.text_stream -> liteinfer.server.app" in broken.stdout

    # The serving stack reaching into tooling.
    planted.write_text(planted.read_text().replace("liteinfer.server.app", "liteinfer.quant.cli"))
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "liteinfer.engines.text_stream -> liteinfer.quant.cli" in broken.stdout


def _says_why(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or above its block of imports (blank lines may split it)."""
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and (lines[i].strip().startswith(("import ", "from ")) or not lines[i].strip()):
        if "#" in lines[i]:
            return True  # a commented import heads the block
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def function_level_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a comment on its line or the line above) for imports inside functions."""
    src = path.read_text()
    lines = src.splitlines()
    found = {}
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                module = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                found[sub.lineno] = (sub.lineno, module or ".", _says_why(lines, sub.lineno))
    return sorted(found.values())


def test_every_import_inside_a_function_says_why():
    bare = [f"{p.relative_to(ROOT)}:{line} {module}"
            for p in sorted((ROOT / "liteinfer").rglob("*.py"))
            for line, module, commented in function_level_imports(p) if not commented]
    assert not bare, "imports inside functions without a reason (start-up, memory, optional):\n" + "\n".join(bare)
