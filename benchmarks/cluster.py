"""Ray Serve's cost: the same load direct against `liteinfer serve` and through `serve --ray`,
in one run.

    .venv/bin/python benchmarks/cluster.py [--clients 16] [--max-tokens 32] [--per-client 8] [--rounds 2]

The load is benchmarks/loadgen.py's: C clients, each sending streamed chat requests one after
another (distinct questions, so every request is a new conversation to the ingress). Three
servers, each alone on the machine while it is measured (Ray's own processes would otherwise
take CPU from the direct server and flatter the ratio), started and stopped in turn, `rounds`
times in alternating order:

- direct: `liteinfer serve` (the default config: all cores, the planned thread count)
- ray-1:  `liteinfer serve --ray --replicas 1` on a local Ray: one replica with every core,
          behind Ray's HTTP proxy and the ingress deployment
- ray-2:  `--replicas 2`: each replica gets half the cores (1 thread each on 2 cores); the
          same cores, so no gain is expected on one machine: it shows the cost of the split

Prints req/s, tok/s, TTFT p50/p95 and CPU time per request (all processes of the server)
per server, Ray's req/s against direct (target >= 0.9x), its TTFT p95 ratio and the req/s
ratio its CPU cost per request implies where the cores are the limit (less moved by other
work on the machine than the wall-clock rates), and the memory of the Ray path: the peak RSS summed over the `serve
--ray` process and every process of its Ray (GCS, raylet, agents, controller, proxy, ingress,
replicas), and PSS (shared pages counted once: the replicas map one model file), by process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import LoadResult, run_load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_plugin() -> str:
    """plugins/ray_serve pip-installed into a folder of its own (as the tests do), unless the
    environment has it already."""
    try:
        import liteinfer_ray  # noqa: F401

        return ""
    except ModuleNotFoundError:
        target = tempfile.mkdtemp(prefix="liteinfer-ray-plugin-")
        subprocess.run([PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target,
                        str(ROOT / "plugins/ray_serve")], check=True, capture_output=True)
        return target


class Server:
    """A server process in a session of its own; its peak RSS summed over its process tree."""

    def __init__(self, name: str, args: list[str], env: dict, timeout: float = 400):
        self.name, self.port = name, free_port()
        self.log = tempfile.NamedTemporaryFile("w", prefix=f"cluster-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([PY, "-m", "liteinfer", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.start_s = time.monotonic()
        self.peak_rss = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"{name} not ready")
        self.start_s = time.monotonic() - self.start_s
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def tree(self) -> list[psutil.Process]:
        p = psutil.Process(self.proc.pid)
        return [p, *p.children(recursive=True)]

    def _sample(self) -> None:
        while self._sampling:
            total = 0
            for q in self.tree():
                try:
                    total += q.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, total)
            time.sleep(0.25)

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """(name, CPU time: user + system) of every process in the tree, by pid."""
        out = {}
        for q in self.tree():
            try:
                t = q.cpu_times()
                out[q.pid] = (_proc_name(q), t.user + t.system)
            except psutil.Error:
                pass
        return out

    def memory_by_process(self) -> dict[str, dict[str, int]]:
        """RSS and PSS (MB) by process name: Ray's workers by their title (ray::ServeReplica...)."""
        out: dict[str, Counter] = {}
        for q in self.tree():
            try:
                name = _proc_name(q)
                mem = q.memory_full_info()
            except psutil.Error:
                continue
            c = out.setdefault(name, Counter())
            c["rss_mb"] += mem.rss >> 20
            c["pss_mb"] += mem.pss >> 20
            c["n"] += 1
        return {k: dict(v) for k, v in sorted(out.items(), key=lambda kv: -kv[1]["rss_mb"])}

    def stop(self) -> None:
        self._sampling = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its Ray is left
        except ProcessLookupError:
            pass
        self.log.close()


def _proc_name(q: psutil.Process) -> str:
    """Ray's workers by their title (ray::ServeReplica:liteinfer:LiteInferReplica), the rest by name."""
    cmd = q.cmdline()
    name = cmd[0] if cmd and cmd[0].startswith("ray::") else q.name()
    return name.split(" ")[0].split(".")[0][:48]


def measure(srv: Server, clients: int, per_client: int, max_tokens: int) -> tuple[LoadResult, Counter]:
    """The load's result, and the CPU seconds the server's whole process tree spent on it: the
    cost per request that decides req/s where the cores are the limit, and that other work on
    the machine changes far less than it changes wall-clock rates."""
    asyncio.run(run_load("127.0.0.1", srv.port, 1, 2, max_tokens))  # warm-up: first requests load pages
    asyncio.run(run_load("127.0.0.1", srv.port, clients, 1, max_tokens))
    before = srv.cpu_seconds()
    res = asyncio.run(run_load("127.0.0.1", srv.port, clients, per_client, max_tokens))
    after = srv.cpu_seconds()
    by_name: Counter = Counter()
    for pid, (name, t) in after.items():
        by_name[name] += t - before.get(pid, (name, 0.0))[1]
    return res, by_name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--per-client", type=int, default=8, help="requests each client sends per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="each server started and measured this many times")
    ap.add_argument("--no-two", action="store_true", help="leave out the 2-replica run")
    ap.add_argument("--only", default=None, help="comma-separated servers to run: direct,ray-1,ray-2")
    ap.add_argument("--ray-threads", type=int, default=None,
                    help="engine threads of the 1-replica Ray server (default: the config's, all cores)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    plugin = install_plugin()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (plugin, os.environ.get("PYTHONPATH", "")) if p)}
    servers = {"direct": [], "ray-1": ["--ray", "--replicas", "1"], "ray-2": ["--ray", "--replicas", "2"]}
    if a.ray_threads:
        servers["ray-1"] += ["--threads", str(a.ray_threads)]
    if a.no_two:
        del servers["ray-2"]
    if a.only:
        servers = {k: v for k, v in servers.items() if k in a.only.split(",")}
    order = list(servers)
    totals = {name: LoadResult(a.clients) for name in servers}
    peak, start, memory, cpu = Counter(), {}, {}, Counter()
    cpu_names: dict[str, Counter] = {name: Counter() for name in servers}
    print(f"{a.clients} clients x {a.per_client} streamed requests, {a.max_tokens} tokens each; "
          f"{psutil.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    for r in range(a.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            srv = Server(name, ["-m", a.model, *servers[name]], env)
            try:
                res, cpu_by = measure(srv, a.clients, a.per_client, a.max_tokens)
                cpu_s = sum(cpu_by.values())
                cpu_names[name].update(cpu_by)
                if name.startswith("ray"):
                    memory[name] = srv.memory_by_process()  # after the load: the replicas' KV cache in use
            finally:
                srv.stop()
            t = totals[name]
            t.requests, t.errors, t.tokens = t.requests + res.requests, t.errors + res.errors, t.tokens + res.tokens
            t.seconds += res.seconds
            cpu[name] += cpu_s
            t.ttft += res.ttft
            t.latency += res.latency
            peak[name] = max(peak[name], srv.peak_rss)
            start[name] = round(srv.start_s, 1)
            print(json.dumps({"round": r, "server": name, **res.row(),
                              "cpu_ms_per_req": round(1000 * cpu_s / max(1, res.requests)),
                              "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)

    rows = {name: {**t.row(), "cpu_ms_per_req": round(1000 * cpu[name] / max(1, t.requests)),
                   "peak_rss_mb": peak[name] >> 20, "start_s": start[name]} for name, t in totals.items()}
    print("\nserver   req/s   tok/s  ttft_p50  ttft_p95  errors  CPU/request  peak RSS (tree)  start")
    for name, row in rows.items():
        print(f"{name:<7} {row['req/s']:>6} {row['tok/s']:>7} {row['ttft_p50_ms']:>7} ms {row['ttft_p95_ms']:>6} ms "
              f"{row['errors']:>6} {row['cpu_ms_per_req']:>8} ms {row['peak_rss_mb']:>10} MB {row['start_s']:>9} s")
    if "direct" not in rows or "ray-1" not in rows:
        return 0
    d, r1 = rows["direct"], rows["ray-1"]
    ratio = r1["req/s"] / d["req/s"] if d["req/s"] else float("nan")
    ttft = r1["ttft_p95_ms"] / d["ttft_p95_ms"] if d["ttft_p95_ms"] else float("nan")
    cpu_ratio = d["cpu_ms_per_req"] / r1["cpu_ms_per_req"] if r1["cpu_ms_per_req"] else float("nan")
    print(f"\nRay Serve, 1 replica: {ratio:.2f}x direct req/s (target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}), "
          f"TTFT p95 {ttft:.2f}x direct; CPU per request {r1['cpu_ms_per_req']} ms against {d['cpu_ms_per_req']} ms: "
          f"{cpu_ratio:.2f}x direct req/s where the cores are the limit")
    if "ray-2" in rows:
        r2 = rows["ray-2"]
        print(f"Ray Serve, 2 replicas on these {psutil.cpu_count()} CPUs (1 thread each, the same cores): "
              f"{r2['req/s'] / d['req/s']:.2f}x direct req/s, TTFT p95 {r2['ttft_p95_ms'] / d['ttft_p95_ms']:.2f}x: "
              "no gain is expected without more cores")
    for name, by in cpu_names.items():
        n = max(1, totals[name].requests)
        print(f"{name} CPU per request by process: " + ", ".join(
            f"{k} {1000 * v / n:.0f} ms" for k, v in by.most_common() if 1000 * v / n >= 1))
    for name, procs in memory.items():
        rss = sum(p["rss_mb"] for p in procs.values())
        pss = sum(p["pss_mb"] for p in procs.values())
        print(f"\n{name} memory after the load: RSS {rss} MB summed over {sum(p['n'] for p in procs.values())} "
              f"processes, PSS {pss} MB (peak RSS {peak[name] >> 20} MB); direct peak RSS {peak['direct'] >> 20} MB")
        for pname, p in procs.items():
            print(f"  {pname:<48} x{p['n']}  RSS {p['rss_mb']:>5} MB  PSS {p['pss_mb']:>5} MB")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "ray_1_req_ratio": ratio, "ray_1_ttft_p95_ratio": ttft,
                                            "ray_1_cpu_req_ratio": cpu_ratio,
                                            "memory": memory}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
