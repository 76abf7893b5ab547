"""The encrypted-models plugin (plugins/encrypt, built on the plugin API only), pip-installed
into a folder of its own: encrypt -> serve -> chat / embeddings through the openai client for
the default GGUF and the MiniLM ONNX model, the clear model only in memory (a memfd the server
maps, no clear copy in any folder it writes); and every damaged file fails in one line,
writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _plugin_install import ROOT, env_with, pip_install_target
from conftest import ServerProcess

HEAD = 1 << 20  # a clear copy is looked for by the model's first 1 MB
HEADER, TAG = 84, 16


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return pip_install_target(ROOT / "plugins/encrypt", tmp_path_factory.mktemp("encrypt-plugin"))


def liteinfer(*args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(r, fragment: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert fragment in lines[-1], lines[-1]


def clear_copies(head: bytes, roots: list[Path], skip: set[str], recursive: bool = True) -> list[str]:
    """Files under `roots` whose first bytes are the model's first 1 MB."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _, files in (os.walk(root) if recursive else [next(os.walk(root))]):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    if os.path.islink(p) or os.path.getsize(p) < len(head) or os.path.realpath(p) in skip:
                        continue
                    with open(p, "rb") as f:
                        if f.read(len(head)) == head:
                            found.append(p)
                except OSError:
                    continue
    return found


# ---- the file format: each damage fails in one line and writes nothing


@pytest.fixture(scope="module")
def small(plugin_dir, tmp_path_factory):
    """A 300 kB 'GGUF' (the magic, then random bytes) encrypted in 64 KiB chunks: 5 chunks."""
    d = tmp_path_factory.mktemp("small")
    clear = d / "m.bin"  # GGUF magic, no valid header: a .gguf name would be checked by the catalog
    clear.write_bytes(b"GGUF" + os.urandom(300_000 - 4))
    env = env_with(plugin_dir)
    r = liteinfer("encrypt", str(clear), str(d / "m.lienc"), "--key-file", str(d / "k"), "--new-key",
                  "--chunk-mb", "0.0625", env=env)
    assert r.returncode == 0, r.stderr
    assert "5 chunks of 64 KiB" in r.stdout
    liteinfer("encrypt", str(clear), str(d / "other.lienc"), "--key-file", str(d / "k2"), "--new-key", env=env)
    return d, env


def test_roundtrip_and_key_file(small):
    d, env = small
    assert (d / "k").stat().st_mode & 0o777 == 0o600
    key_hex = (d / "k").read_text().strip()
    assert len(key_hex) == 64
    r = liteinfer("decrypt", str(d / "m.lienc"), str(d / "back.gguf"), "--key-file", str(d / "k"), env=env)
    assert r.returncode == 0, r.stderr
    assert (d / "back.gguf").read_bytes() == (d / "m.bin").read_bytes()
    # the key from the environment; never printed
    r = liteinfer("decrypt", str(d / "m.lienc"), str(d / "back2.gguf"), env={**env, "LITEINFER_MODEL_KEY": key_hex})
    assert r.returncode == 0 and key_hex not in r.stdout + r.stderr
    one_line_error(liteinfer("encrypt", str(d / "m.bin"), str(d / "x.lienc"), "--key-file", str(d / "k"),
                             "--new-key", env=env), "never overwrites a key")
    (d / "notes.txt").write_text("not a model")
    one_line_error(liteinfer("encrypt", str(d / "notes.txt"), str(d / "x.lienc"), "--key-file", str(d / "k"),
                             env=env), "neither a GGUF nor an ONNX model")
    assert not (d / "x.lienc").exists()


def _damage(data: bytes, how: str) -> bytes:
    chunk = (64 << 10) + TAG
    start = HEADER + TAG
    if how == "flipped byte":
        i = start + 2 * chunk + 500  # inside chunk 3
        return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
    if how == "reordered chunks":
        c1, c2 = data[start + chunk: start + 2 * chunk], data[start + 2 * chunk: start + 3 * chunk]
        return data[:start + chunk] + c2 + c1 + data[start + 3 * chunk:]
    if how == "truncated":
        return data[:-1000]
    if how == "last chunk dropped":
        return data[:start + 4 * chunk]
    if how == "bytes appended":
        return data + b"\0" * 16
    if how == "header changed":  # the chunk-size field
        return data[:16] + bytes([data[16] ^ 1]) + data[17:]
    raise AssertionError(how)


@pytest.mark.parametrize("how,message", [
    ("wrong key", "wrong key"),
    ("flipped byte", "chunk 3 of 5 does not authenticate (the file was altered, damaged or its chunks reordered)"),
    ("reordered chunks", "chunk 2 of 5 does not authenticate"),
    ("truncated", "truncated (299180 of 300180 bytes)"),
    ("last chunk dropped", "truncated"),
    ("bytes appended", "16 unexpected bytes after the last chunk"),
    ("header changed", "wrong key (or a damaged header)"),
    ("not encrypted", "not a liteinfer encrypted model"),
])
def test_damage_fails_in_one_line_and_writes_nothing(small, tmp_path, how, message):
    d, env = small
    src = tmp_path / "in.lienc"
    key = d / ("k2" if how == "wrong key" else "k")
    data = (d / "m.lienc").read_bytes()
    assert len(data) == HEADER + TAG + 300_000 + 5 * TAG == 300_180
    src.write_bytes(data if how == "wrong key" else (d / "m.bin").read_bytes() if how == "not encrypted"
                    else _damage(data, how))
    out = tmp_path / "out" / "clear.gguf"
    r = liteinfer("decrypt", str(src), str(out), "--key-file", str(key), env=env)
    one_line_error(r, message)
    assert not out.exists() and (not out.parent.exists() or not list(out.parent.iterdir()))


# ---- serving: the default GGUF


@pytest.fixture(scope="module")
def encrypted_gguf(plugin_dir, default_model_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("enc-gguf")
    env = env_with(plugin_dir)
    r = liteinfer("encrypt", str(default_model_path), str(d / "smollm2.lienc"), "--key-file", str(d / "model.key"),
                  "--new-key", env=env)
    assert r.returncode == 0, r.stderr
    return d, env


def test_encrypted_gguf_serves_from_a_memfd_and_no_clear_copy_exists(encrypted_gguf, default_model_path, tmp_path):
    import httpx
    from openai import OpenAI

    d, env = encrypted_gguf
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    key_hex = (d / "model.key").read_text().strip()
    srv = ServerProcess("-m", str(d / "smollm2.lienc"), "--ctx", "2048",
                        env={**env, "LITEINFER_MODEL_KEY_FILE": str(d / "model.key"), "LITEINFER_HOME": str(home),
                             "TMPDIR": str(tmp)})
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data][0] == "smollm2"
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="smollm2", messages=ask, max_tokens=24, temperature=0)
        # the same greedy reply as the clear file on the same kernels (the split is off for both)
        clear = liteinfer("generate", "-m", str(default_model_path), "--chat", "-p", ask[0]["content"],
                          "--temperature", "0", "--max-tokens", "24", "--json", env=env)
        assert reply.choices[0].message.content == json.loads(clear.stdout)["text"] != ""
        # the one-shot commands open it the same way (generate / chat)
        enc = liteinfer("generate", "-m", str(d / "smollm2.lienc"), "--chat", "-p", ask[0]["content"],
                        "--temperature", "0", "--max-tokens", "24", "--json",
                        env={**env, "LITEINFER_MODEL_KEY": key_hex, "TMPDIR": str(tmp)})
        assert json.loads(enc.stdout)["text"] == json.loads(clear.stdout)["text"], enc.stderr
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smollm2", messages=ask, max_tokens=24, temperature=0, stream=True) if c.choices)
        assert streamed == reply.choices[0].message.content

        # the clear model lives in a memfd the process maps, and nowhere on disk
        maps = Path(f"/proc/{srv.proc.pid}/maps").read_text()
        assert "/memfd:liteinfer-model (deleted)" in maps
        fds = [os.readlink(p) for p in Path(f"/proc/{srv.proc.pid}/fd").iterdir()]
        assert not [t for t in fds if t.endswith(".gguf")], fds
        head = default_model_path.read_bytes()[:HEAD]
        skip = {os.path.realpath(default_model_path)}
        roots = [tmp_path, d, Path(os.getcwd()), Path("/dev/shm")]
        assert clear_copies(head, roots, skip) == []
        # /tmp itself: its files only (other people's work lives in its folders)
        assert clear_copies(head, [Path("/tmp")], skip, recursive=False) == []
        assert not (home / "q4_1_split").exists()  # the split's clear Q4_0 copy is not made

        # the GGUF's facts are still read from memory (Ollama's /api/show)
        show = httpx.post(srv.url + "/api/show", json={"model": "smollm2"}, timeout=30)
        assert show.status_code == 200 and show.json()["details"]["format"] == "gguf"
    finally:
        srv.stop()
    log = srv.proc.stdout.read()
    assert "decrypted smollm2.lienc into memory" in log and key_hex not in log
    assert "process made non-dumpable" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_protected_process_memfd_is_closed_to_the_same_users_other_processes():
    """What protect_process() (plugins.encrypt.protect_process, on by default) buys: as an
    ordinary user, another process of that user reads the memfd through /proc/PID/fd/N
    before, and cannot after; the process itself still opens it (llama.cpp does)."""
    import ctypes

    sys.path.insert(0, str(ROOT / "plugins/encrypt"))
    from liteinfer_encrypt.loader import protect_process

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: an unprivileged user with a memfd
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # dumpable, as a process the user started (setuid cleared it)
            fd = os.memfd_create("liteinfer-model", 0)
            os.write(fd, b"GGUF clear weights")
            other = f"cat /proc/{os.getpid()}/fd/{fd} >/dev/null 2>&1"
            before = os.system(other) == 0
            protected = protect_process()
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                itself = f.read() == b"GGUF clear weights"
            after = os.system(other) == 0
            os.write(write, json.dumps([before, protected, itself, after]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        assert json.loads(f.read()) == [True, True, True, False]


def test_serving_an_encrypted_model_without_its_key_fails_before_binding(encrypted_gguf, tmp_path):
    d, env = encrypted_gguf
    enc = str(d / "smollm2.lienc")
    one_line_error(liteinfer("serve", "-m", enc, "--port", "0", env=env, timeout=60), "the model is encrypted: give "
                   "its key with LITEINFER_MODEL_KEY_FILE=PATH")
    wrong = os.urandom(32).hex()
    r = liteinfer("serve", "-m", enc, "--port", "0", env={**env, "LITEINFER_MODEL_KEY": wrong}, timeout=60)
    one_line_error(r, "smollm2.lienc: wrong key (or a damaged header)")
    assert wrong not in r.stdout + r.stderr
    config = tmp_path / "device_config.json"
    config.write_text(json.dumps({"schema_version": 1, "plugins": {"encrypt": {"key_file": str(tmp_path / "none")}}}))
    one_line_error(liteinfer("serve", "-m", enc, "--config", str(config), "--port", "0", env=env, timeout=60),
                   f"key file {tmp_path / 'none'} not found")


# ---- serving: an ONNX embedding model


def test_encrypted_onnx_embeddings_match_the_clear_model(plugin_dir, tmp_path):
    import numpy as np
    from onnx_models import SENTENCES, minilm_fp32
    from openai import OpenAI

    from liteinfer.engines.onnx import load_model

    clear = minilm_fp32()
    key_hex = os.urandom(32).hex()
    env = env_with(plugin_dir, TMPDIR=str(tmp_path))
    r = liteinfer("encrypt", str(clear), str(tmp_path / "minilm.lienc"), "--key-file", "/dev/null", env=env)
    one_line_error(r, "key file /dev/null: not a model key")  # an empty key file: refused, key not shown
    (tmp_path / "k").write_text(key_hex + "\n")
    os.chmod(tmp_path / "k", 0o600)
    r = liteinfer("encrypt", str(clear), str(tmp_path / "minilm.lienc"), "--key-file", str(tmp_path / "k"), env=env)
    assert r.returncode == 0 and "onnx model" in r.stdout, r.stderr

    # an ONNX model is no chat model: one line, before the port
    one_line_error(liteinfer("serve", "-m", str(tmp_path / "minilm.lienc"), env={**env, "LITEINFER_MODEL_KEY": key_hex},
                             timeout=60), "holds an ONNX embedding or classifier model, not a GGUF chat model")
    # the key through the config's plugins.encrypt section, the whole-model hash checked too
    config = tmp_path / "device_config.json"
    config.write_text(json.dumps({"schema_version": 1, "plugins": {"encrypt": {
        "key_file": str(tmp_path / "k"), "verify_hash": True}}}))
    srv = ServerProcess("--no-llm", "--embedding-model", str(tmp_path / "minilm.lienc"), "--config", str(config),
                        env=env)
    try:
        got = OpenAI(base_url=srv.url + "/v1", api_key="none").embeddings.create(model="minilm", input=SENTENCES[:3])
        assert srv.proc.poll() is None
        head = clear.read_bytes()[:HEAD]
        assert clear_copies(head, [tmp_path, Path(os.getcwd()), Path("/dev/shm")], {os.path.realpath(clear)}) == []
    finally:
        srv.stop()
    want = load_model(clear).embed(SENTENCES[:3])
    assert np.abs(np.array([e.embedding for e in got.data]) - want).max() < 1e-5
    # `liteinfer embed` opens it the same way, the key from the same config
    r = liteinfer("embed", "-m", str(tmp_path / "minilm.lienc"), "--config", str(config), "--json", SENTENCES[0],
                  env=env)
    assert r.returncode == 0, r.stderr
    assert np.abs(np.array(json.loads(r.stdout)["data"][0]["embedding"]) - want[0]).max() < 1e-5
    assert key_hex not in srv.proc.stdout.read()
