"""`serve --ray` when it is full, and under a route prefix: one replica that takes 2 requests
(--max-batch 1 --max-queue 1: one decoding, one waiting) with Ray's queue of 1 in front of
it; past that the ingress answers 429 with Retry-After, as the one-box server does when its
queue is full, and every request accepted is answered. The application answers under
--route-prefix, the replica's routes unchanged beneath it.

Skipped only when ray[serve] is not installed (`make test` installs it: Makefile test-deps)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from _plugin_install import ROOT, pip_install_target

pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'liteinfer[ray]' "
                    "(make test installs it)")
from test_ray_serve import MODEL, RayServer  # noqa: E402 (after the skip: it needs ray too)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, default_model_path):
    plugin_dir = pip_install_target(ROOT / "plugins/ray_serve", tmp_path_factory.mktemp("ray-plugin"))
    log = tmp_path_factory.mktemp("ray-log") / "serve.log"
    srv = RayServer(plugin_dir, log, "-m", MODEL, "--replicas", "1", "--max-batch", "1", "--max-queue", "1",
                    "--ctx", "1024", "--app-name", "edge", "--route-prefix", "/edge", replicas=1, prefix="/edge")
    yield srv
    srv.stop()


def test_past_the_replicas_and_rays_queue_the_answer_is_429_with_retry_after(small_server):
    url = small_server.url + "/edge"
    assert httpx.get(small_server.url + "/v1/models", timeout=10).status_code == 404  # only under the prefix
    models = httpx.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(c.post(url + "/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 32,
                "messages": [{"role": "user", "content": f"Tell a story about the number {i}."}]}) for i in range(8)))

    answers = asyncio.run(burst())
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 429} and codes[200] >= 2 and codes[429] >= 1, codes
    for r in answers:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["choices"][0]["message"]["content"] is not None
    assert f"liteinfer_ray_backpressure_total {codes[429]}\n" in small_server.metrics()


def test_a_replica_that_cannot_start_is_one_line_naming_its_node(tmp_path):
    """What the replica could not do on its node (here: a one-shot model nobody pulled; the
    driver checks the chat model itself before Ray starts, the replicas check the rest) comes
    back as serve's one-line error, and the local Ray goes down with the command."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from _plugin_install import env_with

    plugin_dir = pip_install_target(ROOT / "plugins/ray_serve", tmp_path / "plugin")
    proc = subprocess.Popen([sys.executable, "-m", "liteinfer", "serve", "--ray", "--no-llm", "--embedding-model",
                             "no-such-embedder", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_with(plugin_dir), start_new_session=True)
    try:
        _, err = proc.communicate(timeout=400)
        last = err.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith("error: unknown one-shot model 'no-such-embedder'"), err[-2000:]
        assert "(node " in last
        for _ in range(30):  # Ray's processes (its process group) end with the command
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
        else:
            pytest.fail("Ray's processes outlived serve --ray")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
