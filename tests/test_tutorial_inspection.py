"""docs/tutorials/inspection.md, run as written: every ```bash block in order, in one shell,
with a short training run, a temp output folder and a free port. The served model must beat
chance on the test images, the CLI and curl must answer with labels."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tutorials" / "inspection.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tutorial_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_tutorial_covers_the_whole_path():
    text = " ".join(tutorial_commands())
    for step in ["examples/inspection/train.py", "liteinfer convert torch", "liteinfer quantize", "liteinfer eval classify", "liteinfer profile",
                 "examples/inspection/serve.py", "examples/inspection/classify.py", "liteinfer classify", "curl"]:
        assert step in text, step


@pytest.mark.torch
@pytest.mark.slow
def test_tutorial_runs_end_to_end(tmp_path):
    pytest.importorskip("torch")
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    port = free_port()
    script = ["set -euo pipefail"]
    for line in tutorial_commands():
        line = (line.replace("--epochs 3", "--epochs 1 --limit 3000")
                .replace("--port 8000", f"--port {port}").replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        if line.startswith("export OUT="):
            line = f"export OUT={tmp_path}"
        script.append(f"echo {shlex.quote('>>> ' + line)}")
        if line.endswith("&"):  # the server: wait until it answers, stop it (by its pid) at the end
            script += [line, "SERVER=$!", "trap 'kill $SERVER' EXIT",
                       f"for i in $(seq 1 240); do curl -sf http://127.0.0.1:{port}/health >/dev/null && break; "
                       "sleep 0.5; done"]
        else:
            script.append(line)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=1200)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]

    for name in ["fashion_cnn.onnx", "labels.txt", "fashion_cnn.int8.onnx", "device_config.json", "png/0_9.png"]:
        assert (tmp_path / name).is_file(), name
    served = re.search(r"(\d+) images, accuracy ([0-9.]+)", out)
    assert served and int(served.group(1)) == 500 and float(served.group(2)) > 0.2, out[-2000:]
    reply, _ = json.JSONDecoder().raw_decode(next(line for line in out.splitlines()
                                                 if line.startswith('{"object":"list"')))
    assert len(reply["data"][0]["labels"]) == 3
    cli = [line for line in out.splitlines() if line.startswith(f"{tmp_path}/png/")]
    assert len(cli) == 2 and all(line.count("|") == 2 for line in cli)
