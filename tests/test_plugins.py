"""The plugin API (liteinfer/core/plugins.py, docs/plugins.md) on real installs: the example plugin
pip-installed into a folder of its own adds a command, a route (on a real server, behind the
API key), a catalog name and a config section; a plugin that fails to import is one line and
the core runs on; clashes with the core or another plugin are refused, not obeyed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import httpx
import pytest
from _plugin_install import ROOT, broken_plugin, env_with, pip_install_target
from conftest import ServerProcess
from pydantic import BaseModel

from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import EngineType, Plugin, Registry, validate_sections


@pytest.fixture(scope="module")
def hello_dir(tmp_path_factory):
    return pip_install_target(ROOT / "examples/hello-plugin", tmp_path_factory.mktemp("hello-plugin"))


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    return broken_plugin(tmp_path_factory.mktemp("broken-plugin"))


def liteinfer(*args, env):
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_installed_plugin_is_listed_and_its_command_and_config_work(hello_dir, tmp_path):
    env = env_with(hello_dir)
    r = liteinfer("plugins", env=env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("hello "))
    assert "0.1.0" in line and "liteinfer-hello" in line
    assert "commands: hello" in line and "routes: GET /hello" in line
    assert "catalog: hello (1 models)" in line and "config: plugins.hello" in line
    rows = {row["name"]: row for row in json.loads(liteinfer("plugins", "--json", env=env).stdout)}
    assert rows["hello"]["version"] == "0.1.0" and rows["hello"]["catalog"][0]["names"] == ["hello-tiny"]

    r = liteinfer("hello", "--name", "Ada", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "Hello, Ada!"), r.stderr
    config = tmp_path / "device_config.json"
    config.write_text(json.dumps({"schema_version": 1, "plugins": {"hello": {"greeting": "Hi"}}}))
    assert liteinfer("hello", "--name", "Ada", "--config", str(config), env=env).stdout.strip() == "Hi, Ada!"
    # the plugin's model validates its section: one line naming the field
    config.write_text(json.dumps({"schema_version": 1, "plugins": {"hello": {"greeting": "Hi", "colour": 1}}}))
    r = liteinfer("hello", "--config", str(config), env=env)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "field plugins.hello.colour" in r.stderr

    # without the install, neither the command nor the listing knows it
    plain = env_with()
    assert "hello" not in liteinfer("plugins", env=plain).stdout
    assert liteinfer("hello", env=plain).returncode == 2


def test_plugin_route_and_catalog_name_on_a_real_server_beside_a_broken_plugin(hello_dir, broken_dir):
    from openai import OpenAI

    env = env_with(hello_dir, broken_dir)
    # a plugin that fails to import: one line, exit 0, the others listed
    r = liteinfer("plugins", env=env)
    assert r.returncode == 0
    warnings = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(warnings) == 1 and "plugin broken (liteinfer-broken 0.3) not loaded" in warnings[0], r.stderr
    assert "ModuleNotFoundError" in warnings[0] and "liteinfer_no_such_dependency" in warnings[0]
    assert any(x.startswith("broken ") and "FAILED" in x for x in r.stdout.splitlines())
    assert any(x.startswith("hello ") for x in r.stdout.splitlines())

    # the server starts on the plugin's catalog name, serves its route behind the API key
    srv = ServerProcess("-m", "hello-tiny", "--ctx", "1024", "--api-key", "k1", env=env)
    try:
        assert httpx.get(srv.url + "/hello", timeout=10).status_code == 401
        got = httpx.get(srv.url + "/hello", headers=srv.auth, timeout=10)
        assert got.status_code == 200 and got.json() == {"greeting": "Hello", "model": "hello-tiny", "ready": True}
        client = OpenAI(base_url=srv.url + "/v1", api_key="k1")
        reply = client.chat.completions.create(model="hello-tiny", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Say hi."}])
        assert reply.choices[0].message.content
        assert "/hello" in httpx.get(srv.url + "/openapi.json", headers=srv.auth, timeout=10).text
    finally:
        srv.stop()
    log = srv.proc.stdout.read()
    assert sum("plugin broken" in x for x in log.splitlines()) == 1, log


def test_the_core_runs_with_only_a_broken_plugin(broken_dir, default_model_path):
    env = env_with(broken_dir)
    r = liteinfer("generate", "-m", str(default_model_path), "-p", "Hi", "--max-tokens", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert sum("plugin broken (liteinfer-broken 0.3) not loaded" in x for x in r.stderr.splitlines()) == 1
    # LITEINFER_NO_PLUGINS=1: not even looked for
    r = liteinfer("plugins", env={**env, "LITEINFER_NO_PLUGINS": "1"})
    assert r.returncode == 0 and not r.stderr and "no plugins installed" in r.stdout


# ---- the registry's rules, in process


def _parser():
    parser = argparse.ArgumentParser(prog="liteinfer")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve")
    return parser, sub


def test_a_command_hook_that_clashes_or_raises_is_left_out_whole(caplog):
    def takes_serve(sub):
        sub.add_parser("mine")
        sub.add_parser("serve")  # a core command's name: argparse refuses, and "mine" goes too

    def buggy(sub):
        raise RuntimeError("boom\nsecond line")

    def good(sub):
        sub.add_parser("other").set_defaults(func=lambda a: 0)

    reg = Registry()
    for name, hook in (("a", takes_serve), ("b", buggy), ("c", good)):
        reg.add(Plugin(name=name, commands=[hook]))
    parser, sub = _parser()
    reg.add_commands(sub)
    assert sorted(sub.choices) == ["other", "serve"]
    assert "mine" not in parser.format_help()
    assert [e.commands for e in reg.loaded] == [[], [], ["other"]]
    assert reg.loaded[1].errors == ["commands: RuntimeError: boom"]
    assert sum("plugin b: commands: RuntimeError: boom; left out" in r.message for r in caplog.records) == 1


def test_names_suffixes_and_config_sections_are_first_come(caplog):
    class S(BaseModel):
        n: int = 1

    reg = Registry()
    assert reg.add(Plugin(name="one", engines=[EngineType(".x", "x files")], config={"s": S}))
    assert reg.add(Plugin(name="one")) is None
    assert reg.add(Plugin(name="two", engines=[EngineType(".x", "more x files")])) is None
    assert reg.add(Plugin(name="three", config={"s": S})) is None
    assert [f.error for f in reg.failed] == [
        "another plugin is named 'one'", "plugin 'one' already loads .x files",
        "plugin 'one' already owns config section 's'"]
    assert reg.engine_for("/m/model.x").description == "x files" and reg.engine_for("model.gguf") is None


def test_config_sections_are_validated_by_their_plugin(monkeypatch):
    class S(BaseModel):
        n: int = 1

    reg = Registry()
    reg.add(Plugin(name="one", config={"s": S}))
    monkeypatch.setattr("liteinfer.core.plugins._registry", reg)
    assert validate_sections({"s": {"n": 3}, "unowned": {"anything": 1}})["s"].n == 3
    with pytest.raises(LiteInferError, match=r"^cfg.json: field plugins.s.n: Input should be a valid integer"):
        validate_sections({"s": {"n": "three"}}, "cfg.json")


def test_the_package_never_imports_a_plugin():
    import ast

    plugin_packages = {p.parent.name for p in (ROOT / "plugins").glob("*/liteinfer_*/__init__.py")}
    plugin_packages |= {p.parent.name for p in (ROOT / "examples").glob("*/liteinfer_*/__init__.py")}
    assert {"liteinfer_encrypt", "liteinfer_hello"} <= plugin_packages
    found = []
    for path in (ROOT / "liteinfer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in plugin_packages]
    assert not found


def test_a_router_factory_that_raises_leaves_only_its_routes_out(caplog):
    def broken():
        raise ImportError("no module named 'fastapi_extra'")

    def fine():
        from fastapi import APIRouter

        router = APIRouter()
        router.add_api_route("/fine", lambda: {"ok": True})
        return router

    reg = Registry()
    reg.add(Plugin(name="a", routes=[broken, fine]))
    got = reg.routers()
    assert [[r.path for r in router.routes] for _, router in got] == [["/fine"]]
    assert reg.loaded[0].errors == ["routes: ImportError: no module named 'fastapi_extra'"]
    assert any("plugin a: routes: ImportError" in r.message for r in caplog.records)
