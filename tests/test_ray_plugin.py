"""The Ray plugin (plugins/ray_serve) without a Ray cluster: the serve mode the plugin API adds
to `serve` (--ray and its options, refused without --ray, a clash left out whole), the affinity
key a conversation keeps, the merged /metrics text, and what gets deployed for which options.
Ray itself is not needed here: the modules under test import it only to deploy
(tests/test_ray_serve.py runs a real local cluster)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from _plugin_install import ROOT, env_with, pip_install_target

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import Plugin, Registry, ServeMode


@pytest.fixture(scope="module")
def ray_plugin_dir(tmp_path_factory):
    return pip_install_target(ROOT / "plugins/ray_serve", tmp_path_factory.mktemp("ray-plugin"))


@pytest.fixture(scope="module")
def plugin_modules(ray_plugin_dir):
    sys.path.insert(0, str(ray_plugin_dir))
    try:
        import liteinfer_ray
        from liteinfer_ray import affinity, cli, metrics

        yield liteinfer_ray, affinity, metrics, cli
    finally:
        sys.path.remove(str(ray_plugin_dir))


def liteinfer(*args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ---- the plugin API's serve mode


def _serve_parser(reg: Registry) -> argparse.ArgumentParser:
    from liteinfer.server.app import add_serve_arguments

    p = argparse.ArgumentParser(prog="serve")
    add_serve_arguments(p)
    reg.add_serve_options(p)
    return p


def test_a_serve_mode_adds_options_and_takes_over_serve_only_with_its_flag():
    ran = []

    def add(g):
        g.add_argument("--cluster", action="store_true")
        g.add_argument("--nodes", type=int, default=None)

    reg = Registry()
    entry = reg.add(Plugin("c", serve=[ServeMode("--cluster", add, lambda args: ran.append(args) or 0)]))
    p = _serve_parser(reg)
    assert entry.serve_options == ["--cluster", "--nodes"]
    assert "c plugin" in p.format_help()
    mode = reg.serve_mode(p.parse_args(["--cluster", "--nodes", "3", "-m", "x"]))
    assert mode is not None and mode.run(argparse.Namespace()) == 0 and ran
    assert reg.serve_mode(p.parse_args(["-m", "x"])) is None  # plain serve: the one-box server
    with pytest.raises(LiteInferError, match="--nodes is an option of --cluster: give --cluster too"):
        reg.serve_mode(p.parse_args(["--nodes", "3"]))


def test_a_serve_mode_that_clashes_with_a_core_option_is_left_out_whole(caplog):
    def clash(g):
        g.add_argument("--cluster", action="store_true")
        g.add_argument("--port", type=int)  # serve's own

    def no_flag(g):
        g.add_argument("--other", action="store_true")

    reg = Registry()
    bad = reg.add(Plugin("bad", serve=[ServeMode("--cluster", clash, lambda a: 0)]))
    odd = reg.add(Plugin("odd", serve=[ServeMode("--flag", no_flag, lambda a: 0)]))
    p = _serve_parser(reg)
    assert bad.serve_options == [] and "serve options: ArgumentError" in bad.errors[0]
    assert odd.serve_options == [] and "did not add its flag" in odd.errors[0]
    help_text = p.format_help()
    assert "--cluster" not in help_text and "--other" not in help_text and "bad plugin" not in help_text
    args = p.parse_args(["--port", "9000"])  # the core option is still the core's
    assert args.port == 9000 and reg.serve_mode(args) is None
    assert any("plugin bad: serve options" in r.message for r in caplog.records)


def test_the_installed_plugin_lists_its_serve_options_and_checks_them(ray_plugin_dir):
    env = env_with(ray_plugin_dir)
    r = liteinfer("plugins", env=env)
    line = next(x for x in r.stdout.splitlines() if x.startswith("ray "))
    assert "liteinfer-ray" in line and "serve options: --ray, --replicas, --autoscale, --address" in line
    rows = {row["name"]: row for row in json.loads(liteinfer("plugins", "--json", env=env).stdout)}
    assert "--replica-cpus" in rows["ray"]["serve_options"]
    assert "--ray" in liteinfer("serve", "--help", env=env).stdout
    r = liteinfer("serve", "--replicas", "2", env=env)  # one line, before anything starts
    assert r.returncode == 1 and r.stderr.strip() == "error: --replicas is an option of --ray: give --ray too"
    r = liteinfer("serve", "--ray", "--autoscale", "3:1", env=env)
    assert r.returncode == 2 and "give MIN:MAX replicas" in r.stderr
    r = liteinfer("serve", "--ray", "--replicas", "2", "--autoscale", "1:2", env=env)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    # a model this machine has not pulled: one line, before Ray starts
    r = liteinfer("serve", "--ray", "-m", "no-such-model-anywhere", env=env)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no-such-model-anywhere" in r.stderr and "Traceback" not in r.stderr
    assert "Ray instance" not in r.stderr + r.stdout
    # a cluster address where nothing answers: one line at once (Ray itself would wait minutes)
    r = liteinfer("serve", "--ray", "--address", "127.0.0.1:1", env=env)
    assert r.returncode == 1 and "--address 127.0.0.1:1: nothing answers there" in r.stderr.strip().splitlines()[-1]
    # without the plugin, serve has no --ray
    r = liteinfer("serve", "--ray", env=env_with(LITEINFER_NO_PLUGINS="1"))
    assert r.returncode == 2 and "unrecognized arguments: --ray" in r.stderr


# ---- affinity: which requests belong together


def test_a_conversation_keeps_its_key_and_others_do_not_share_it(plugin_modules):
    _, affinity, _, _ = plugin_modules
    key = affinity.affinity_key
    system = {"role": "system", "content": "You are terse."}
    turn1 = [system, {"role": "user", "content": "Name a colour."}]
    turn2 = [*turn1, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    k = key("/v1/chat/completions", {"messages": turn1})
    assert len(k) == 16 and k == key("/v1/chat/completions", {"messages": turn2})
    assert k == key("/api/chat", {"messages": turn2})  # Ollama's chat route keys alike
    assert k != key("/v1/chat/completions", {"messages": [system, {"role": "user", "content": "Name a fruit."}]})
    assert k != key("/v1/chat/completions", {"messages": turn1[1:]})  # another system prompt, another key
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
    assert key("/v1/chat/completions", {"messages": parts}) == key(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a colour."}]})
    # completions: the prompt's first PROMPT_CHARS characters
    long = "x" * affinity.PROMPT_CHARS
    assert key("/v1/completions", {"prompt": long + " turn 1"}) == key("/v1/completions", {"prompt": long + " 2"})
    assert key("/v1/completions", {"prompt": [long]}) == key("/v1/completions", {"prompt": long + "more"})
    assert key("/v1/completions", {"prompt": "short"}) != key("/v1/completions", {"prompt": "short, then more"})
    # no key: any replica
    for path, body in [("/v1/embeddings", {"input": "x"}), ("/v1/chat/completions", {"messages": "x"}),
                       ("/v1/chat/completions", None), ("/v1/completions", {"prompt": ""}),
                       ("/v1/chat/completions", {"messages": [1]})]:
        assert key(path, body) == ""


# ---- /metrics of all replicas in one exposition


def test_replica_metrics_merge_into_one_family_each_labelled_by_replica(plugin_modules):
    from prometheus_client.parser import text_string_to_metric_families

    _, _, metrics, _ = plugin_modules
    one = ("# HELP liteinfer_requests_total requests\n# TYPE liteinfer_requests_total counter\n"
           'liteinfer_requests_total{status="ok"} 3.0\n'
           "# HELP liteinfer_queue_depth waiting\n# TYPE liteinfer_queue_depth gauge\nliteinfer_queue_depth 1.0\n")
    two = one.replace("3.0", "5.0").replace("depth 1.0", "depth 0.0")
    text = metrics.merge({"a": one, "b": two}, "# TYPE liteinfer_ray_replicas gauge\nliteinfer_ray_replicas 2\n")
    assert text.count("# TYPE liteinfer_requests_total counter") == 1  # one family, both replicas' samples
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    totals = {s.labels["replica"]: s.value for s in fams["liteinfer_requests"].samples if s.name.endswith("_total")}
    assert totals == {"a": 3.0, "b": 5.0}
    assert all(s.labels["status"] == "ok" for s in fams["liteinfer_requests"].samples if s.name.endswith("_total"))
    assert [s.value for s in fams["liteinfer_ray_replicas"].samples] == [2.0]


# ---- what is deployed for which options


def _args(**kw):
    base = dict(address=None, autoscale=None, replicas=None, replica_cpus=None, threads=None, ray_resource=[],
                app_name=None, route_prefix=None, target_ongoing=None)
    return argparse.Namespace(**{**base, **kw})


def test_the_deployment_plan(plugin_modules):
    _, _, _, cli = plugin_modules
    config = DeviceConfig()
    config.scheduler.max_batch, config.server.max_queue = 8, 16
    # a local Ray: this machine's cores shared out, and the engine threads with them
    p = cli.plan(_args(replicas=2), config, usable_cores=4)
    assert (p["local"], p["cpus"], p["threads"]) == (True, 2, 2)
    r = p["replica"]
    assert r["num_replicas"] == 2 and r["ray_actor_options"] == {"num_cpus": 2}
    assert r["max_ongoing_requests"] == 24 and r["max_queued_requests"] == 32
    assert p["ingress"]["ray_actor_options"] == {"num_cpus": 0} and p["ingress"]["max_ongoing_requests"] >= 1000
    assert (p["name"], p["route_prefix"]) == ("liteinfer", "/")
    # one local replica: the config's own threads (its plan for this machine)
    assert cli.plan(_args(), config, usable_cores=4)["threads"] is None
    # a cluster: 1 CPU reserved unless told, threads from each node's config; a device class by resource
    p = cli.plan(_args(address="ray://head:10001", autoscale=(1, 4), ray_resource=[("rpi5", 1.0)]), config, 2)
    assert (p["local"], p["cpus"], p["threads"]) == (False, 1, None)
    assert p["replica"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                                  "target_ongoing_requests": 8}
    assert p["replica"]["ray_actor_options"] == {"num_cpus": 1, "resources": {"rpi5": 1.0}}
    p = cli.plan(_args(address="auto", replica_cpus=4, target_ongoing=3, autoscale=(0, 2)), config, 2)
    assert (p["cpus"], p["threads"]) == (4, None)  # Ray reserves 4; the node's plan says how many threads
    assert cli.plan(_args(replica_cpus=1), config, 4)["threads"] == 1  # a local Ray: as given
    assert p["replica"]["autoscaling_config"]["initial_replicas"] == 1
    assert p["replica"]["autoscaling_config"]["target_ongoing_requests"] == 3
    assert cli.plan(_args(replicas=2, threads=3), config, 4)["threads"] == 3  # --threads wins


# ---- a replica's app without a socket


def test_a_request_runs_through_the_app_in_process_and_a_closed_stream_disconnects(plugin_modules):
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from liteinfer_ray.asgi import Lifespan, call

    events: list[str] = []
    gate = asyncio.Event()

    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/echo")
    async def echo(body: dict):
        return {"got": body}

    @app.get("/stream")
    async def stream():
        async def gen():
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
            try:
                await gate.wait()  # until the client goes away
                yield b"data: never\n\n"
            finally:
                events.append("stream closed")
        return StreamingResponse(gen(), media_type="text/event-stream")

    def req(method, path, body=b""):
        return {"method": method, "path": path, "query_string": b"", "body": body, "client": ["10.0.0.1", 5],
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}

    async def scenario():
        life = Lifespan(app)
        await life.startup()
        items = [i async for i in call(app, req("POST", "/echo", b'{"a": 1}'), [(b"x-liteinfer-replica", b"r1")])]
        assert len(items) == 1 and items[0]["status"] == 200 and not items[0]["more"]
        assert json.loads(items[0]["body"]) == {"got": {"a": 1}}
        assert (b"x-liteinfer-replica", b"r1") in items[0]["headers"]
        # a stream: status, headers and the first bytes together, then the rest as it comes
        it = call(app, req("GET", "/stream"))
        first = await it.__anext__()
        assert first["status"] == 200 and first["body"].startswith(b"data: 1") and first["more"]
        body = first["body"]
        while b"data: 2" not in body:
            body += (await it.__anext__())["body"]
        await it.aclose()  # the client went away: the app's stream is told and ends
        for _ in range(100):
            if "stream closed" in events:
                break
            await asyncio.sleep(0.02)
        await life.shutdown()

    asyncio.run(scenario())
    assert events == ["startup", "stream closed", "shutdown"]


def test_a_chat_stream_counts_as_started_only_with_its_first_token(plugin_modules):
    """The role-only event that opens a chat stream is held back with the response start
    until the first token: a replica that dies before it leaves the client nothing to undo,
    and the ingress sends the request to another replica."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from liteinfer_ray.asgi import call

    app = FastAPI()
    gate = asyncio.Event()
    role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    token = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'

    @app.get("/chat")
    async def chat():
        async def gen():
            yield role
            await gate.wait()  # prefill
            yield token
            yield b"data: [DONE]\n\n"
        return StreamingResponse(gen(), media_type="text/event-stream")

    async def scenario():
        it = call(app, {"method": "GET", "path": "/chat", "query_string": b"", "body": b"", "client": None,
                        "headers": []})
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.3)
        assert not first.done()  # the role event alone: nothing sent yet
        gate.set()
        item = await first
        assert item["status"] == 200 and item["body"].startswith(role) and token in item["body"]
        rest = b"".join([i["body"] async for i in it])
        assert (item["body"] + rest).endswith(b"data: [DONE]\n\n")

    asyncio.run(scenario())
