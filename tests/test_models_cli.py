"""Model management for real: `pull` from a real HTTP server on 127.0.0.1 (progress, checksum,
a corrupted copy refused with nothing left), `show` on the default model's header, `rm`,
`models`, `ps` against a running server, and `serve` that never downloads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest


def liteinfer(*args, home: Path | None = None, env: dict | None = None, timeout: float = 300):
    extra = {"LITEINFER_HOME": str(home)} if home else {}
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **extra, **(env or {})})


def one_line_error(r, *fragments):
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FileServer:
    """http.server on 127.0.0.1 serving one folder; counts the requests it answered."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                outer.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(default_model_path, tmp_path_factory):
    """The default model and a copy with one flipped byte in its tensor data, over HTTP."""
    folder = tmp_path_factory.mktemp("www")
    good = folder / "good.gguf"
    shutil.copyfile(default_model_path, good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the header still parses: only the checksum can tell
    (folder / "bad.gguf").write_bytes(bytes(data))
    srv = FileServer(folder)
    yield srv, sha256(good)
    srv.close()


def home_with_catalog(tmp_path: Path, entries: dict) -> Path:
    home = tmp_path / "home"
    home.mkdir(parents=True)
    (home / "catalog.json").write_text(json.dumps(entries))
    return home


def test_pull_shows_progress_and_checks_the_sha256(served, tmp_path):
    srv, digest = served
    home = home_with_catalog(tmp_path, {"web-smol": {"kind": "llm", "file": "smol.gguf", "url": srv.url + "/good.gguf",
                                                     "sha256": digest, "license": "Apache-2.0"}})
    r = liteinfer("pull", "web-smol", home=home)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == home / "models" / "web-smol" / "smol.gguf" and sha256(path) == digest
    bars = [line for line in r.stderr.splitlines() if line.startswith("pulling web-smol")]
    # not a terminal: a line per 10%, in order, ending at 100% of the real size
    percents = [int(line.split("]")[1].split("%")[0]) for line in bars]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 10, bars
    assert "98.4/98.4 MB" in bars[-1]
    source = json.loads((path.parent / "liteinfer-source.json").read_text())
    assert source["source"] == srv.url + "/good.gguf" and source["sha256"] == {"smol.gguf": digest}
    # again: already there, no second download
    n = len(srv.requests)
    assert liteinfer("pull", "web-smol", "-q", home=home).returncode == 0 and len(srv.requests) == n


def test_a_corrupted_download_is_refused_and_leaves_nothing(served, tmp_path):
    srv, digest = served
    home = home_with_catalog(tmp_path, {"web-bad": {"kind": "llm", "file": "smol.gguf", "url": srv.url + "/bad.gguf",
                                                    "sha256": digest}})
    r = liteinfer("pull", "web-bad", "-q", home=home)
    one_line_error(r, "web-bad", "failed its checksum", digest[:16], "was not kept")
    assert not (home / "models").exists() or list((home / "models").rglob("*")) == []
    # and a source that is gone is a clean error too
    home2 = home_with_catalog(tmp_path / "2", {"web-gone": {"kind": "llm", "file": "x.gguf",
                                                            "url": srv.url + "/missing.gguf"}})
    one_line_error(liteinfer("pull", "web-gone", home=home2), "could not download web-gone")
    assert not (home2 / "models" / "web-gone").exists()


def test_show_reads_the_header(default_model_path):
    r = liteinfer("show", str(default_model_path), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["architecture"] == "llama" and info["parameters"] == 134_515_008 and info["parameter_size"] == "135M"
    assert info["context_length"] == 8192 and info["layers"] == 30 and info["embedding_length"] == 576
    assert info["quantization"] == "Q4_1" and info["kind"] == "llm"
    assert info["tensors"] == {"q4_1": 210, "f32": 61, "q8_0": 1}
    assert "<|im_start|>" in info["chat_template"] and info["license"] == "apache-2.0"
    text = liteinfer("show", str(default_model_path)).stdout
    for fragment in ("architecture       llama", "q4_1               210", "chat template (", "license"):
        assert fragment in text, text
    assert liteinfer("show", str(default_model_path), "--template").stdout.strip() == info["chat_template"].strip()
    one_line_error(liteinfer("show", "no-such-model"), "unknown model")


def test_rm_and_models(served, tmp_path):
    srv, digest = served
    home = home_with_catalog(tmp_path, {"web-smol": {"kind": "llm", "file": "smol.gguf", "url": srv.url + "/good.gguf",
                                                     "sha256": digest}})
    assert liteinfer("pull", "web-smol", "-q", home=home).returncode == 0
    rows = json.loads(liteinfer("models", "--json", home=home).stdout)
    row = next(r for r in rows if r["name"] == "web-smol")
    assert row["cached"] and row["size"] == 98_362_432 and row["quantization"] == "Q4_1" and row["kind"] == "llm"
    assert row["source"] == srv.url + "/good.gguf"
    table = liteinfer("models", home=home).stdout
    assert "web-smol" in table and "Q4_1" in table and "98.4 MB" in table
    # the Q4_1 split serve derives from the model (engines/q4_1_split.py) goes with it
    model = home / "models" / "web-smol" / "smol.gguf"
    code = f"from liteinfer.engines.q4_1_split import cache_folder; print(cache_folder({str(model)!r}))"
    split = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "LITEINFER_HOME": str(home)}).stdout.strip())
    assert split.parent == home / "q4_1_split"
    split.mkdir(parents=True)
    (split / "model.gguf").write_bytes(b"x" * 1000)
    r = liteinfer("rm", "web-smol", home=home)
    assert r.returncode == 0 and "deleted web-smol (98.4 MB) and its Q4_1 split" in r.stdout, r.stdout
    assert not (home / "models" / "web-smol").exists() and not split.exists()
    assert not next(r for r in json.loads(liteinfer("models", "--json", home=home).stdout)
                    if r["name"] == "web-smol")["cached"]
    one_line_error(liteinfer("rm", "web-smol", home=home), "not in the cache")


def test_ps_asks_the_running_server(server):
    r = liteinfer("ps", "--url", server.url, "--json")
    assert r.returncode == 0, r.stderr
    models = json.loads(r.stdout)
    assert len(models) == 1
    m = models[0]
    assert m["size"] == 98_362_432 and m["details"]["quantization_level"] == "Q4_1"
    assert m["context_length"] > 0 and m["process_rss"] > 50e6
    text = liteinfer("ps", "--url", server.url).stdout
    assert m["name"] in text and "Q4_1" in text and "SERVER RSS" in text
    from conftest import free_port

    one_line_error(liteinfer("ps", "--url", f"http://127.0.0.1:{free_port()}"), "no liteinfer server at")


def test_serve_never_downloads(served, tmp_path):
    srv, digest = served
    home = home_with_catalog(tmp_path, {"web-smol": {"kind": "llm", "file": "smol.gguf", "url": srv.url + "/good.gguf",
                                                     "sha256": digest}})
    n = len(srv.requests)
    r = liteinfer("serve", "-m", "web-smol", "--port", "1", home=home, timeout=120)
    one_line_error(r, "'web-smol' is not pulled yet", "liteinfer pull web-smol")
    assert len(srv.requests) == n and not (home / "models" / "web-smol").exists()


@pytest.mark.parametrize("hub_id", ["someone/some-model:some-file.gguf", "someone/some-model:Q4_K_M"])
def test_hub_pull_offline_is_one_line(hub_id, tmp_path):
    r = liteinfer("pull", hub_id, home=tmp_path, env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    one_line_error(r, "could not download " + hub_id)
    assert list(tmp_path.rglob("*.gguf")) == []
