"""`liteinfer serve --ray` on a real local Ray cluster (plugins/ray_serve, pip-installed into a
folder of its own): 2 replicas of the default model behind the ingress, with an API key.
The openai client gets answers streamed and not; a conversation's turn 2 lands on the replica
that served turn 1 and reuses its KV cells (cached prompt tokens > 0); /metrics shows every
replica; killing a replica's process under load loses no request that had not started
streaming (each is retried on the other replica, or answered 503 with Retry-After), a stream
that had started ends with an error event instead of hanging, and Ray starts the replica again.

Skipped only when ray[serve] is not installed (`make test` installs it: Makefile test-deps)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from _plugin_install import ROOT, env_with, pip_install_target
from conftest import free_port

pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'liteinfer[ray]' "
                    "(make test installs it)")
openai = pytest.importorskip("openai")

KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "smollm2-135m"


class RayServer:
    """`liteinfer serve --ray ...` in a session of its own (Ray's processes are its children:
    whatever is left at the end goes with the process group), ready when /health answers 200
    and every replica has reported."""

    def __init__(self, plugin_dir, log_path, *args: str, replicas: int = 2, prefix: str = "", timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = self.url + prefix  # where the application answers (--route-prefix)
        self.log_path = log_path
        self.log = open(log_path, "w")  # Ray logs a lot: a file, never an unread pipe
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liteinfer", "serve", "--ray", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env_with(plugin_dir), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve --ray exited: {self.tail()}")
            try:
                if (httpx.get(self.base + "/health", timeout=5).status_code == 200
                        and len(self.replicas()) == replicas):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"serve --ray not ready: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return open(self.log_path).read()[-3000:]

    def replicas(self) -> list[dict]:
        return httpx.get(self.base + "/cluster", headers=AUTH, timeout=10).json()["replicas"]

    def metrics(self) -> str:
        return httpx.get(self.base + "/metrics", headers=AUTH, timeout=10).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # serve.delete, then the local Ray shuts down
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of this Ray still running
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, default_model_path):
    plugin_dir = pip_install_target(ROOT / "plugins/ray_serve", tmp_path_factory.mktemp("ray-plugin"))
    log = tmp_path_factory.mktemp("ray-log") / "serve.log"
    srv = RayServer(plugin_dir, log, "-m", MODEL, "--replicas", "2", "--ctx", "2048",
                    "--api-key", KEY)
    yield srv
    srv.stop()


def client(srv: RayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_two_replicas_answer_the_openai_client_streamed_and_not(ray_server):
    reps = ray_server.replicas()
    assert len(reps) == 2 and len({r["pid"] for r in reps}) == 2 and all(r["ready"] for r in reps)
    assert all(r["threads"] == 1 for r in reps)  # this machine's 2 cores shared out between 2 replicas
    c = client(ray_server)
    msgs = [{"role": "user", "content": "Name three colours."}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1  # streamed, not one piece
    assert text == r.choices[0].message.content  # same model, same answer, whichever replica
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [m.id for m in c.models.list().data] == [MODEL]
    # the API key is the replicas' (and the ingress's, for /metrics and /cluster)
    bad = openai.OpenAI(base_url=ray_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
    assert httpx.get(ray_server.url + "/metrics").status_code == 401
    assert httpx.get(ray_server.url + "/cluster").status_code == 401
    assert httpx.get(ray_server.url + "/health").json()["status"] == "ready"


def test_a_conversation_stays_on_its_replica_and_reuses_its_kv_cells(ray_server):
    c = client(ray_server)
    served: Counter = Counter()
    for i in range(4):
        msgs = [{"role": "system", "content": f"You are assistant number {i}. Answer in one short sentence."},
                {"role": "user", "content": f"What is {i} plus {i}?"}]
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
        first, replica = raw.parse(), raw.headers["x-liteinfer-replica"]
        # turn 1 is new to every replica (at most the chat template's opening is cached)
        assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens // 2
        msgs += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And times two?"}]
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
        second = raw.parse()
        assert raw.headers["x-liteinfer-replica"] == replica, f"conversation {i}: turn 2 went elsewhere"
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert cached > 0 and cached >= first.usage.prompt_tokens - 2, (cached, first.usage.prompt_tokens)
        served[replica] += 1
    assert len(served) == 2, served  # new conversations spread over both replicas


def test_metrics_show_every_replica_labelled(ray_server):
    text = ray_server.metrics()
    ids = {r["id"] for r in ray_server.replicas()}
    labelled = set(re.findall(r'liteinfer_generated_tokens_total\{[^}]*replica="(\w+)"', text))
    assert labelled == ids, (labelled, ids)
    assert text.count("# TYPE liteinfer_generated_tokens_total counter") == 1
    assert "liteinfer_ray_replicas 2" in text and "liteinfer_ray_retried_total" in text


def _busy(text: str) -> Counter:
    out: Counter = Counter()
    for m in re.finditer(r'liteinfer_(?:active_sequences|queue_depth)\{replica="(\w+)"\} ([\d.]+)', text):
        out[m.group(1)] += float(m.group(2))
    return out


def test_killing_a_replica_under_load_loses_no_request_that_had_not_started(ray_server):
    url = ray_server.url
    results: list[tuple[str, str]] = []  # (kind, outcome)

    async def one(c: httpx.AsyncClient, i: int, j: int) -> None:
        stream = i % 4 == 0
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me a fact about {i * 10 + j}."}],
                "max_tokens": 48, "stream": stream}
        if not stream:
            r = await c.post(url + "/v1/chat/completions", json=body)
            if r.status_code == 200:
                results.append(("plain", "ok" if r.json()["choices"][0]["message"]["content"] else "empty"))
            elif r.status_code == 503 and r.headers.get("retry-after"):
                results.append(("plain", "503+retry-after"))
            else:
                results.append(("plain", f"{r.status_code}: {r.text[:200]}"))
            return
        async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            data = b"".join([b async for b in r.aiter_bytes()])
        if r.status_code == 200 and data.rstrip().endswith(b"data: [DONE]"):
            results.append(("stream", "ok"))
        elif r.status_code == 200 and b'"replica_died"' in data:
            results.append(("stream", "started, ended with an error event"))
        elif r.status_code == 503 and r.headers.get("retry-after"):
            results.append(("stream", "503+retry-after"))
        else:
            results.append(("stream", f"{r.status_code}: {data[-200:]!r}"))

    async def load(stop: asyncio.Event, i: int) -> None:
        async with httpx.AsyncClient(headers=AUTH, timeout=httpx.Timeout(150)) as c:
            j = 0
            while not stop.is_set():
                await one(c, i, j)
                j += 1

    before = {r["id"]: r["pid"] for r in ray_server.replicas()}
    retried0 = _counter(ray_server.metrics(), "liteinfer_ray_retried_total")

    async def scenario() -> tuple[str, int]:
        stop = asyncio.Event()
        clients = [asyncio.create_task(load(stop, i)) for i in range(12)]
        victim = None
        for _ in range(60):  # the replica with the most requests in it, once both have some
            await asyncio.sleep(0.5)
            busy = _busy(await asyncio.to_thread(ray_server.metrics))
            if len(busy) == 2 and min(busy.values()) >= 2:
                victim = max(busy, key=busy.get)
                break
        assert victim is not None, f"the load never reached both replicas: {busy}"
        os.kill(before[victim], signal.SIGKILL)
        await asyncio.sleep(10)  # the load goes on against the survivor while Ray restarts the other
        stop.set()
        # no request hangs: every client's last request ends well within its timeout
        await asyncio.wait_for(asyncio.gather(*clients), 140)
        return victim, before[victim]

    t0 = time.monotonic()
    victim, pid = asyncio.run(scenario())
    outcomes = Counter(results)
    bad = {k: n for k, n in outcomes.items() if k[1] not in ("ok", "503+retry-after", "started, ended with an error event")
           or (k[0] == "plain" and k[1] == "started, ended with an error event")}
    assert not bad, outcomes
    retried = _counter(ray_server.metrics(), "liteinfer_ray_retried_total") - retried0
    assert retried >= 1, outcomes  # requests were in the victim, and were sent on, not lost
    assert outcomes[("plain", "ok")] >= 10, outcomes

    # Ray starts the replica again: two replicas report, the victim's pid gone
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        reps = ray_server.replicas()
        if len(reps) == 2 and pid not in {r["pid"] for r in reps} and all(r["ready"] for r in reps):
            break
        time.sleep(1)
    else:
        pytest.fail(f"replica {victim} was not brought back: {ray_server.replicas()}")
    print(f"killed {victim} (pid {pid}); back after {time.monotonic() - t0:.0f} s; outcomes {dict(outcomes)}; "
          f"retried {retried:.0f}")
    r = client(ray_server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4)
    assert r.choices[0].message.content is not None


def _counter(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([\d.]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
