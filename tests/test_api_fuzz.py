"""Schemathesis walks the server's own OpenAPI spec (boundary values, wrong types, missing
fields) against a real server: no input may produce a 5xx or hang."""

from __future__ import annotations

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
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "256", "--max-queue", "256")
    try:
        r = subprocess.run([exe, "run", srv.url + "/openapi.json", "-c", "not_a_server_error", "--phases",
                            "coverage", "--request-timeout", "120", "--no-color"],
                           capture_output=True, text=True, timeout=900)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stdout[-3000:]
