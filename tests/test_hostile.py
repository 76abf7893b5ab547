"""A hostile but fair client against a real server (issue 15): oversized and slow requests,
bursts, a missing config, SIGTERM mid-stream, loosely typed fields, killed or starved writers,
open docs. Each test failed on the server before the limits went in."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import ServerProcess

KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1 << 20


def _config(tmp: Path, **limits) -> Path:
    from liteinfer.core.config import DeviceConfig, save_config

    cfg = DeviceConfig()
    cfg.server.api_keys = [KEY]
    for k, v in limits.items():
        section, _, name = k.partition("__")
        setattr(getattr(cfg, section), name, v)
    path = tmp / "device_config.json"
    save_config(cfg, path)
    return path


@pytest.fixture(scope="module")
def srv(default_model_path, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("hostile"), limits__header_timeout_s=2.0, limits__body_timeout_s=2.0)
    s = ServerProcess("-m", str(default_model_path), "--config", str(cfg), "--ctx", "2048", "--max-queue", "4")
    yield s
    s.stop()


def _chat(content: str = "hi", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


class HealthProbe:
    """Polls /health from its own process (the test process's threads would share a GIL with the
    client under test) and reports the slowest answer."""

    SCRIPT = textwrap.dedent("""
        import sys, time, httpx
        url, stop_file = sys.argv[1], sys.argv[2]
        worst, n = 0.0, 0
        with httpx.Client(timeout=10) as c:
            c.get(url)
            while True:
                t0 = time.perf_counter()
                c.get(url)
                worst, n = max(worst, time.perf_counter() - t0), n + 1
                try:
                    open(stop_file).close()
                    break
                except OSError:
                    time.sleep(0.01)
        print(worst, n)
    """)

    def __init__(self, url: str, tmp: Path):
        self.stop_file = tmp / "stop-health-probe"
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, url + "/health", str(self.stop_file)],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)

    def worst(self) -> tuple[float, int]:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=30)
        worst, n = out.split()
        return float(worst), int(n)


# ---- 1. one large request stalls everyone --------------------------------------------------


def _send_big(url: str, n_bytes: int, chunked: bool) -> subprocess.Popen:
    """Post an n-byte JSON body from another process; prints the status and the seconds taken."""
    script = textwrap.dedent(f"""
        import json, time, httpx
        body = json.dumps({{"messages": [{{"role": "user", "content": "x" * {n_bytes}}}]}}).encode()
        content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if {chunked} else body
        t0 = time.perf_counter()
        r = httpx.post("{url}/v1/chat/completions", content=content, timeout=60,
                       headers={{"Authorization": "Bearer {KEY}", "content-type": "application/json"}})
        print(r.status_code, time.perf_counter() - t0, r.json()["error"]["code"])
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_huge_bodies_are_413_at_once_and_health_stays_fast(srv, tmp_path):
    rss0 = psutil.Process(srv.proc.pid).memory_info().rss
    probe = HealthProbe(srv.url, tmp_path)
    results = []
    for n, chunked in ((10 * MB, False), (10 * MB, True), (100 * MB, False)):
        p = _send_big(srv.url, n, chunked)
        out, _ = p.communicate(timeout=120)
        results.append(out.split())
    worst, polls = probe.worst()
    for status, secs, code in results:
        assert status == "413" and code == "request_too_large", results
        assert float(secs) < 5, results
    assert polls > 10 and worst < 0.1, f"/health took {worst * 1000:.0f} ms while big requests were rejected"
    assert psutil.Process(srv.proc.pid).memory_info().rss - rss0 < 20 * MB


def test_classify_json_is_decoded_off_the_loop_and_images_are_bounded(srv):
    """/v1/classify takes up to limits.max_upload_bytes (32 MiB) of JSON with base64 images: one
    image is bounded like a multipart one (20 MB), and parsing and decoding 30 MB of them runs
    in a worker thread: the event loop spends no more on such a body than on one it refuses
    unread (this server has no classifier: 404 after the body is decoded, 415 for text)."""
    headers = {**AUTH, "content-type": "application/json"}
    big = b'{"image": "' + b"A" * (28 * MB) + b'"}'  # 21 MB once decoded
    r = httpx.post(srv.url + "/v1/classify", content=big, headers=headers, timeout=60)
    assert r.status_code == 413 and "image[0] is over 20 MB" in r.json()["error"]["message"], r.text
    images = [base64.b64encode(os.urandom(360 << 10)).decode() for _ in range(64)]
    body = json.dumps({"image": images, "top_k": 3}).encode()
    assert 28 * MB < len(body) < 32 * MB
    # what the decode would cost the loop if it ran there: measured here, on this machine and load
    cpu0 = time.process_time()
    for _ in range(3):
        [base64.b64decode(s, validate=True) for s in json.loads(body)["image"]]
    on_loop_cost = time.process_time() - cpu0
    loop_cpu = {"text/plain": [], "application/json": []}
    for ctype, status in (("text/plain", 415), ("application/json", 404)) * 3:
        cpu0 = srv.loop_cpu_s()
        for _ in range(3):
            r = httpx.post(srv.url + "/v1/classify", content=body, headers={**headers, "content-type": ctype},
                           timeout=60)
            assert r.status_code == status, r.text
        loop_cpu[ctype].append(srv.loop_cpu_s() - cpu0)
    # the least of three rounds: other jobs on the machine only ever add to a round. Receiving the
    # bodies costs both routes the same; decoding on the loop would add on_loop_cost (~0.45 s).
    extra = min(loop_cpu["application/json"]) - min(loop_cpu["text/plain"])
    assert extra < on_loop_cost / 2, (loop_cpu, on_loop_cost)


def test_tokenize_of_a_long_text_runs_off_the_loop(srv):
    """/tokenize with pieces for ~150 k tokens: tokenizing, the piece lookups and the answer's
    JSON run in a worker thread (on the loop they took seconds of its CPU); a text over
    limits.max_prompt_chars is refused before tokenizing."""
    text = "hello world " * 75_000  # 900 k characters
    cpu0 = srv.loop_cpu_s()
    r = httpx.post(srv.url + "/tokenize", json={"content": text, "with_pieces": True}, headers=AUTH, timeout=120)
    loop_cpu = srv.loop_cpu_s() - cpu0
    assert r.status_code == 200 and len(r.json()["tokens"]) > 100_000
    assert loop_cpu < 0.2, f"the event loop spent {loop_cpu:.2f} s of CPU on one /tokenize"
    r = httpx.post(srv.url + "/tokenize", json={"content": "x" * 1_000_001}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long", r.text


def test_declared_size_is_refused_before_the_body_is_sent(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 104857600\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"}"):
            got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 413") and b"limits.max_body_bytes" in got


def test_unknown_huge_field_is_413_not_200(srv):
    body = json.dumps({**_chat(), "junk": "y" * (10 * MB)})
    t0 = time.perf_counter()
    r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers={**AUTH, "content-type":
                   "application/json"}, timeout=60)
    assert r.status_code == 413 and time.perf_counter() - t0 < 5


def test_long_prompts_are_refused_before_tokenizing_all_of_them(srv, tmp_path):
    probe = HealthProbe(srv.url, tmp_path)
    t0 = time.perf_counter()
    too_many_chars = httpx.post(srv.url + "/v1/chat/completions", json=_chat("word " * 400_000), headers=AUTH,
                                timeout=60)  # 2 MB: under the body limit, over max_prompt_chars
    t1 = time.perf_counter()
    too_many_tokens = httpx.post(srv.url + "/v1/completions", json={"prompt": "word " * 150_000, "max_tokens": 2},
                                 headers=AUTH, timeout=60)  # 750 k characters, ~150 k tokens
    t2 = time.perf_counter()
    worst, _ = probe.worst()
    assert too_many_chars.status_code == 400 and too_many_chars.json()["error"]["code"] == "prompt_too_long"
    assert "limits.max_prompt_chars" in too_many_chars.json()["error"]["message"]
    assert too_many_tokens.status_code == 400
    assert too_many_tokens.json()["error"]["code"] == "context_length_exceeded"
    assert t1 - t0 < 2 and t2 - t1 < 2, (t1 - t0, t2 - t1)
    assert worst < 0.1, f"/health took {worst * 1000:.0f} ms while long prompts were checked"


def test_stop_strings_are_bounded(srv):
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "stop": ["x"] * 100}, headers=AUTH,
                   timeout=30)
    assert r.status_code == 400 and "limits.max_stop_strings" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "stop": "x" * 10_000}, headers=AUTH,
                   timeout=30)
    assert r.status_code == 400 and "limits.max_stop_chars" in r.json()["error"]["message"]


# ---- 2. slow clients hold connections forever ------------------------------------------------


def _closed_within(s: socket.socket, seconds: float) -> tuple[float, bytes]:
    s.settimeout(seconds)
    t0, got = time.monotonic(), b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"connection still open after {seconds} s")
    return time.monotonic() - t0, got


def test_silent_connection_is_closed(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        secs, got = _closed_within(s, 6)
    assert got == b"" and secs < 4


def test_half_sent_headers_get_408(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        secs, got = _closed_within(s, 6)
    assert got.startswith(b"HTTP/1.1 408") and b"limits.header_timeout_s" in got and secs < 4


def test_half_sent_body_gets_408(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        secs, got = _closed_within(s, 6)
    assert got.startswith(b"HTTP/1.1 408") and b"limits.body_timeout_s" in got and secs < 4


def test_idle_keep_alive_connection_is_closed(srv):
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        s.sendall(b"GET /hea")  # the next request, never finished
        secs, got = _closed_within(s, 12)
    assert got.startswith(b"HTTP/1.1 200") and secs < 8


# ---- 4. 429 while batch slots are free -------------------------------------------------------


def test_burst_within_the_batch_is_admitted(srv):
    """--max-queue 4 on a 32-slot batch: 12 simultaneous requests all fit (they used to get 429
    before the engine loop had admitted the first ones)."""
    def post(i):
        return httpx.post(srv.url + "/v1/completions", json={"prompt": f"{i}, {i + 1},", "max_tokens": 8,
                          "temperature": 0}, headers=AUTH, timeout=300).status_code

    for _ in range(2):
        with cf.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(post, range(12)))
        assert codes == [200] * 12, codes


# ---- 5. a mistyped --config serves on defaults in silence --------------------------------------


@pytest.mark.parametrize("entry", [["-m", "liteinfer", "serve"], ["app.py"]])
def test_missing_config_file_is_an_error(entry, tmp_path):
    root = Path(__file__).resolve().parents[1]
    entry = [str(root / e) if e.endswith(".py") else e for e in entry]
    r = subprocess.run([sys.executable, *entry, "--config", str(tmp_path / "device_confg.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "device_confg.json not found" in r.stderr and "hw_profiler.py" in r.stderr
    assert "Traceback" not in r.stderr


# ---- 6. SIGTERM cuts streams off mid-answer --------------------------------------------------


def _events(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: "):
            out.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def test_sigterm_drains_then_ends_streams_with_a_final_chunk(default_model_path, tmp_path):
    drain_s = 20.0  # long enough for the short stream on a busy 2-core machine (8 s was not, at load 3-5)
    cfg = _config(tmp_path, server__drain_s=drain_s)
    srv = ServerProcess("-m", str(default_model_path), "--config", str(cfg), "--ctx", "4096")
    try:
        long_body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 3000, "temperature": 0, "stream": True}
        short_body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 6, "temperature": 0, "stream": True}

        def stream(body, started: threading.Event):
            events = []
            with httpx.Client(timeout=120) as c, c.stream("POST", srv.url + "/v1/completions", json=body,
                                                          headers=AUTH) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    events += _events([line])
                    if events:
                        started.set()
            return events

        long_started, short_started = threading.Event(), threading.Event()
        with cf.ThreadPoolExecutor(2) as pool:
            long = pool.submit(stream, long_body, long_started)
            assert long_started.wait(60)
            short = pool.submit(stream, short_body, short_started)
            assert short_started.wait(60)  # both are streaming: SIGTERM now
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            health = httpx.get(srv.url + "/health", timeout=5)
            refused = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi"}, headers=AUTH, timeout=5)
            short_events, long_events = short.result(timeout=60), long.result(timeout=60)
        rc = srv.proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    # the short stream finished inside the drain time, as usual
    assert short_events[-1] == "[DONE]" and "choices" in short_events[-2], short_events[-4:]
    assert short_events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    # the long one was ended: a final chunk with finish_reason, an error event, [DONE]
    assert long_events[-1] == "[DONE]"
    assert long_events[-2]["error"]["code"] == "shutting_down"
    finals = [e for e in long_events[:-1] if "choices" in e and e["choices"][0]["finish_reason"]]
    assert [e["choices"][0]["finish_reason"] for e in finals] == ["abort"]
    assert sum(1 for e in long_events if "choices" in e and e["choices"][0]["text"]) > 5
    assert rc == 0 and drain_s - 0.5 < took < drain_s + 12, (rc, took)


# ---- 7. silent acceptance ---------------------------------------------------------------------


@pytest.mark.parametrize("extra, field", [
    ({"seed": 2 ** 32}, "seed"),
    ({"seed": 2 ** 70}, "seed"),
    ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream_options": {"include_usage": "true"}, "stream": True}, "stream_options.include_usage"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
])
def test_loosely_typed_fields_are_400(srv, extra, field):
    r = httpx.post(srv.url + "/v1/chat/completions", json=_chat(**extra), headers=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(field)


def test_seed_at_the_range_ends_is_accepted(srv):
    for seed in (0, 2 ** 32 - 2):
        r = httpx.post(srv.url + "/v1/chat/completions", json=_chat(seed=seed, temperature=1.0), headers=AUTH,
                       timeout=60)
        assert r.status_code == 200, r.text


# ---- 8. partial files ------------------------------------------------------------------------


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from liteinfer.core.files import atomic_output, scratch_dir
    target = sys.argv[1]
    with scratch_dir(target, "q") as work, atomic_output(target) as tmp:
        (work / "source-f32.gguf").write_bytes(b"x" * 1000)
        tmp.write_bytes(b"y" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_killed_writer_leaves_files_the_next_run_cleans(tmp_path):
    target = tmp_path / "out.gguf"
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)])
    assert r.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(".out.gguf.") for n in left), left  # recognisable, beside it
    from liteinfer.core.files import atomic_write_text

    atomic_write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def _small_disk(tmp_path: Path, size: str = "2m") -> Path:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    return mnt


def test_pull_onto_a_full_or_read_only_disk_names_the_path(tmp_path):
    from liteinfer.core.catalog import load_catalog, pull

    pull("minilm-l6-v2")  # installed by the test setup: the source of the copy
    assert "minilm-l6-v2" in load_catalog()
    mnt = _small_disk(tmp_path)
    try:
        env = {**os.environ, "LITEINFER_HOME": str(mnt)}
        r = subprocess.run([sys.executable, "-m", "liteinfer", "pull", "minilm-l6-v2"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "internal" not in r.stderr, r.stderr
        assert "no space left writing" in r.stderr and str(mnt) in r.stderr and "needs about" in r.stderr
        leftovers = [p for p in mnt.rglob("*") if p.name.startswith(".")]
        assert leftovers == []
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        r = subprocess.run([sys.executable, "-m", "liteinfer", "pull", "minilm-l6-v2"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "read-only" in r.stderr and str(mnt) in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# ---- 9. open docs, plain-text header errors, embedding input count -------------------------------


def test_metrics_and_docs_need_the_key(srv):
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        r = httpx.get(srv.url + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.get(srv.url + path, headers=AUTH, timeout=30).status_code == 200, path
    assert httpx.get(srv.url + "/health", timeout=30).status_code == 200


@pytest.mark.parametrize("complete", [False, True])
def test_huge_header_gets_a_json_431(srv, complete):
    """80 KB of headers, still arriving (h11's buffer limit) or whole in one read (the middleware)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 << 10)
                  + (b"\r\n\r\n" if complete else b""))
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"application/json" in head.lower()
    assert "limits.max_header_bytes" in json.loads(body)["error"]["message"]


def test_early_413_reaches_a_client_that_keeps_uploading(srv):
    """Connection: close and a 9 MB body: the 413 is answered before the upload ends; the
    connection lingers so the client reads it instead of a reset."""
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * (9 << 20) + b'"}]}'
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
            try:
                s.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the answer must still be readable
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 413"), got[:200]


def test_embedding_input_count_limit_is_the_documented_one(srv):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "oneshot.md").read_text()
    assert "up to 2048 strings" in doc
    r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["a"] * 2049}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and "at most 2048" in r.json()["error"]["message"]
