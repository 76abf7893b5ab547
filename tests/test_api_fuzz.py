"""Schemathesis walks the server's own OpenAPI spec against a real server, every phase
(examples, coverage: boundary values, wrong types, missing fields; fuzzing: random valid and
invalid bodies; stateful where the spec has links): no input may produce a 5xx or hang."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ServerProcess


def test_no_input_gives_a_server_error(default_model_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("schemathesis not installed (it is in the test extra)")
    # a small context bounds how long any generated request can run
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "64", "--max-queue", "256")
    try:
        # one worker: with several, Hypothesis' lambda-source cache raised a runtime error of its
        # own (AST recursion depth) on /detokenize's schema; a fixed seed makes a failure repeatable
        r = subprocess.run([exe, "run", srv.url + "/openapi.json", "-c", "not_a_server_error", "--phases",
                            "examples,coverage,fuzzing,stateful", "--max-examples", "10", "--seed", "1",
                            "--request-timeout", "120", "--no-color"],
                           capture_output=True, text=True, timeout=1500)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stdout[-3000:]
    for phase in ("Coverage", "Fuzzing"):
        assert re.search(rf"✅ {phase}\b", r.stdout), r.stdout[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert cases and int(cases.group(1)) > 200 and cases.group(1) == cases.group(2), r.stdout[-3000:]
