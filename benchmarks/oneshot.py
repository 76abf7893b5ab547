"""One-shot serving benchmark: dynamic batching vs no batching vs a plain onnxruntime loop.

    python benchmarks/oneshot.py [--model int8|fp32|PATH.onnx] [--duration 5] [--quick]

What runs, all in this one invocation, over the same model file and the same texts
(fortunes from /usr/share/games/fortunes, one text per request):
  peers    plain onnxruntime, in this process: tokenizers + session.run, one text per call
           (and 8 or 32 texts per call over the length-sorted corpus: what batching can gain
           at best in the kernel, with no serving around it)
  servers  the real HTTP server (`liteinfer serve --no-llm`, uvicorn on
           127.0.0.1), one per setting, all started up front: no batching (max_batch 1),
           fixed (max_batch, delay) settings, and the adaptive controller; a closed-loop load
           client with raw HTTP/1.1 keep-alive connections (asyncio, base64 embeddings like
           the openai client) at concurrency 1 / 8 / 32. Each point is measured in --rounds
           slices with the settings interleaved; requests finishing in a warmup don't count.
  naive    the common deployment as a peer: ONNX Runtime behind FastAPI, one session.run per
           request in FastAPI's thread pool (benchmarks/naive_embed_server.py), same model and
           the same HTTP stack as liteinfer (uvicorn h11, asyncio); --naive-auto adds it on
           uvicorn's own choice (httptools + uvloop where installed)
Prints inferences/s, p50/p95 latency and mean batch per setting and concurrency, the ratios
behind the targets (adaptive within 5% of the best fixed setting; >= 3x no batching at 32
clients) and the server's RSS (target <= 200 MB with the quantized model).

The load client shares the CPU with the server (2 cores here): that costs every HTTP setting
alike, but the in-process ORT loop does not pay it. On a machine busy with other work,
wall-clock rates mostly measure the CPU share each process wins (more runnable threads, more
share), so the table also gives inferences per CPU-second of the server process (utime +
stime from /proc): the work per inference that batching is meant to save. The load average
is printed; busy-machine numbers are upper bounds on latency, lower bounds on throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liteinfer.core.config import DeviceConfig, OneShotSettings, save_config  # noqa: E402

FIXED = [(4, 1.0), (8, 2.0), (16, 2.0), (32, 2.0), (32, 10.0)]
FORTUNES = Path("/usr/share/games/fortunes")


def load_texts(n: int = 512, seed: int = 0) -> list[str]:
    texts = []
    for name in ("computers", "science", "wisdom", "literature", "people", "fortunes"):
        f = FORTUNES / name
        if f.is_file():
            for entry in f.read_text(errors="replace").split("\n%\n"):
                t = " ".join(entry.split())
                if 20 <= len(t) <= 300:
                    texts.append(t)
    if not texts:  # no fortunes package: synthetic sentences of mixed length
        words = "the a quick model small device runs fast text with batch of queue latency".split()
        rng = random.Random(seed)
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for _ in range(n)]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def quantized_minilm() -> Path:
    """all-MiniLM-L6-v2 with every MatMul / Gather in int8 (liteinfer.quant.onnx.quantize), cached."""
    from liteinfer.convert.bert import cached_minilm
    from liteinfer.quant.onnx.quantize import Quantizer, load_onnx, save_model

    src = cached_minilm()
    out = src.with_name(src.stem + "-int8.onnx")
    if not out.exists():
        q = Quantizer(load_onnx(src))
        save_model(q.build({t.node: "int8" for t in q.targets.values() if "int8" in t.choices}), out)
    return out


# ---------------------------------------------------------------- peers: plain onnxruntime


def plain_ort(path: Path, texts: list[str], seconds: float, batch: int, threads: int | None = None) -> dict:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from liteinfer.engines.onnx_meta import TOKENIZER_KEY
    from liteinfer.hardware.cores import usable_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_str(sess.get_modelmeta().custom_metadata_map[TOKENIZER_KEY])
    tok.no_truncation()
    tok.no_padding()  # tokenizer.json pads to a fixed length; pad per batch instead, as the engine does
    out_name = sess.get_outputs()[-1].name
    if batch > 1:  # offline batching at its best: the corpus sorted by length, so little padding
        texts = sorted(texts, key=lambda t: len(tok.encode(t).ids))
    lat, done, i = [], 0, 0
    cpu0 = time.process_time()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        i += batch
        t = time.perf_counter()
        enc = [tok.encode(t).ids for t in chunk]  # encode_batch's thread pool would fight ORT's
        width = max(map(len, enc))
        ids = np.zeros((batch, width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(enc):
            ids[r, : len(e)], mask[r, : len(e)] = e, 1
        sess.run([out_name], {"input_ids": ids, "attention_mask": mask})
        lat.append(time.perf_counter() - t)
        done += batch
    return {"rate": done / seconds, "p50": _q(lat, 0.5), "p95": _q(lat, 0.95), "batch": batch,
            "per_cpu_s": done / max(time.process_time() - cpu0, 1e-9)}


def _q(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] * 1000 if v else float("nan")


# ---------------------------------------------------------------- HTTP server + load client


class Server:
    def __init__(self, model: Path, settings: OneShotSettings | str, port: int):
        """liteinfer's one-shot server with `settings`; a string = the naive peer (one session.run
        per request in FastAPI's thread pool: benchmarks/naive_embed_server.py) on that HTTP stack."""
        self.port = port
        if isinstance(settings, str):
            cmd = [sys.executable, str(ROOT / "benchmarks/naive_embed_server.py"), str(model), "--port", str(port),
                   "--stack", settings]
        else:
            cfg = DeviceConfig(embedding_model=str(model), oneshot=settings)
            cfg_path = Path(tempfile.mkdtemp(prefix="liteinfer-bench-")) / "config.json"
            save_config(cfg, cfg_path)
            cmd = [sys.executable, "-m", "liteinfer", "serve", "--no-llm", "--config", str(cfg_path), "--port",
                   str(port)]
        self.naive = isinstance(settings, str)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read()}")
            try:
                self.get("/health")
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("server did not start")

    def get(self, path: str) -> dict:
        import http.client

        if self.naive and path == "/v1/oneshot/stats":  # it batches nothing: one item per call
            return {"embedding": {"batches": 0, "items": 0}}
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", path)
        return json.loads(c.getresponse().read())

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the server process in MB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _client(port: int, bodies: list[bytes], start: int, t_warm: float, t_end: float, out: list, errors: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < t_end:
            body = bodies[i % len(bodies)]
            i += 1
            head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t = time.perf_counter()
            writer.write(head + body)
            resp = await reader.readuntil(b"\r\n\r\n")
            status = int(resp.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in resp.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            done = time.perf_counter()
            if status != 200:
                errors.append(status)
            elif done >= t_warm:
                out.append(done - t)
    finally:
        writer.close()


def load(srv: Server, bodies: list[bytes], clients: int, warmup: float, seconds: float) -> dict:
    """Closed-loop clients for warmup + seconds; latencies and server CPU seconds of the measured part."""
    lat: list[float] = []
    errors: list[int] = []
    cpu: list[float] = []
    t_warm = time.perf_counter() + warmup
    t_end = t_warm + seconds

    async def sample_cpu():
        await asyncio.sleep(warmup)
        cpu.append(srv.cpu_s())
        await asyncio.sleep(seconds)
        cpu.append(srv.cpu_s())

    async def main():
        await asyncio.gather(sample_cpu(),
                             *(_client(srv.port, bodies, k * 17, t_warm, t_end, lat, errors) for k in range(clients)))

    asyncio.run(main())
    return {"lat": lat, "errors": len(errors), "cpu_s": cpu[1] - cpu[0]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="int8", help="int8 (quantized MiniLM, default), fp32, or a .onnx path")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the first slice of each point")
    ap.add_argument("--rounds", type=int, default=3, help="slices per point, settings interleaved")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--target-p95-ms", type=float, default=200.0)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: usable cores)")
    ap.add_argument("--quick", action="store_true", help="2 s points, fewer fixed settings")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive per-request ORT + FastAPI peer")
    ap.add_argument("--naive-auto", action="store_true",
                    help="also the naive peer on uvicorn's own HTTP stack (httptools/uvloop when installed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
    from liteinfer.convert.bert import cached_minilm

    model = {"int8": quantized_minilm, "fp32": cached_minilm}.get(args.model, lambda: Path(args.model))()
    conc = [int(c) for c in args.concurrency.split(",")]
    texts = load_texts()
    load_before = os.getloadavg()
    print(f"model {model.name} ({model.stat().st_size / 1e6:.1f} MB), {len(texts)} texts, "
          f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs")
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("WARNING: the machine is busy; timings are noisy (latency upper bounds, throughput lower bounds)")

    results: dict = {"model": str(model), "load_before": load_before[0], "peer": {}, "http": {}}
    for batch in (1, 8, 32):
        r = plain_ort(model, texts, args.duration, batch, args.threads)
        results["peer"][f"ort loop b={batch}"] = r
        print(f"plain onnxruntime loop, {batch:2d} text(s)/call: {r['rate']:7.1f} inf/s  p95/call {r['p95']:7.1f} ms"
              f"  {r['per_cpu_s']:6.1f} inf/CPU-s")

    th = {"intra_op_threads": args.threads}
    settings = [("no batching", OneShotSettings(max_batch=1, max_delay_ms=0, adaptive=False, **th))]
    fixed = FIXED[1:4] if args.quick else FIXED
    settings += [(f"fixed {n}/{d:g}ms", OneShotSettings(max_batch=n, max_delay_ms=d, adaptive=False, **th))
                 for n, d in fixed]
    settings.append(("adaptive", OneShotSettings(max_batch=32, max_delay_ms=2.0, adaptive=True,
                                                 target_p95_ms=args.target_p95_ms, **th)))
    if not args.no_naive:
        settings.append(("naive ORT+FastAPI", "same"))  # on liteinfer's HTTP stack: only the serving differs
        if args.naive_auto:
            settings.append(("naive, uvicorn auto", "auto"))
    bodies = [json.dumps({"input": t, "encoding_format": "base64"}).encode() for t in texts]
    # All servers up at once (idle ones cost no CPU); each concurrency level is measured in
    # `rounds` short slices per setting, in rotating order, so a burst of outside load hits
    # every setting alike instead of whichever happened to run then.
    servers = {name: Server(model, s, free_port()) for name, s in settings}
    rss = None
    try:
        for c in conc:
            lat: dict[str, list[float]] = {n: [] for n in servers}
            errs = dict.fromkeys(servers, 0)
            cpu = dict.fromkeys(servers, 0.0)
            stats0 = {n: srv.get("/v1/oneshot/stats")["embedding"] for n, srv in servers.items()}
            names = list(servers)
            for rnd in range(args.rounds):
                for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                    warm = args.warmup if rnd == 0 else 0.5
                    r = load(servers[name], bodies, c, warm, args.duration / args.rounds)
                    lat[name] += r["lat"]
                    errs[name] += r["errors"]
                    cpu[name] += r["cpu_s"]
            for name, srv in servers.items():
                after = srv.get("/v1/oneshot/stats")["embedding"]
                d_batches = after["batches"] - stats0[name]["batches"]
                r = {"rate": len(lat[name]) / args.duration, "p50": _q(lat[name], 0.5), "p95": _q(lat[name], 0.95),
                     "errors": errs[name], "per_cpu_s": len(lat[name]) / max(cpu[name], 1e-9),
                     "mean_batch": (after["items"] - stats0[name]["items"]) / d_batches if d_batches else 0.0}
                if name == "adaptive":
                    r["controller"] = after.get("controller")
                results["http"].setdefault(name, {})[c] = r
                print(f"{name:16s} c={c:2d}: {r['rate']:7.1f} inf/s  p50 {r['p50']:7.1f} ms  p95 {r['p95']:7.1f} ms"
                      f"  mean batch {r['mean_batch']:5.1f}  {r['per_cpu_s']:6.1f} inf/CPU-s" + (f"  errors {r['errors']}" if r["errors"] else ""),
                      flush=True)
        rss = servers["adaptive"].rss_mb()
    finally:
        for srv in servers.values():
            srv.stop()

    print()
    print(f"{'setting':16s} " + " ".join(f"{'c=' + str(c) + ' inf/s':>12s} {'p95 ms':>8s}" for c in conc))
    for name, per in results["http"].items():
        print(f"{name:16s} " + " ".join(f"{per[c]['rate']:12.1f} {per[c]['p95']:8.1f}" for c in conc))
    print("\ninferences per server CPU-second (the work batching saves; barely moved by outside load):")
    for name, per in results["http"].items():
        print(f"{name:16s} " + " ".join(f"{per[c]['per_cpu_s']:12.1f} {'':8s}" for c in conc))
    peer = results["peer"]
    print("plain ORT loop (in process, sorted corpus for b > 1): "
          + ", ".join(f"b={b} {peer[f'ort loop b={b}']['per_cpu_s']:.1f}" for b in (1, 8, 32)))
    print()
    peer1 = results["peer"]["ort loop b=1"]["rate"]
    ok = naive_ok = True
    for c in conc:
        fixed_rates = {n: per[c]["rate"] for n, per in results["http"].items() if n.startswith("fixed")}
        best_name = max(fixed_rates, key=fixed_rates.get)
        adaptive = results["http"]["adaptive"][c]["rate"]
        none = results["http"]["no batching"][c]["rate"]
        ratio = adaptive / fixed_rates[best_name]
        line = (f"c={c:2d}: adaptive / best fixed ({best_name}) = {ratio:.3f}; adaptive / no batching = "
                f"{adaptive / none:.2f}x; adaptive / plain ORT loop = {adaptive / peer1:.2f}x")
        ok &= ratio >= 0.95
        if c == 32:
            ok &= adaptive / none >= 3.0
        print(line)
        per = results["http"]
        best_cpu = max(v[c]["per_cpu_s"] for n, v in per.items() if n.startswith("fixed"))
        if "naive ORT+FastAPI" in results["http"]:
            naive = results["http"]["naive ORT+FastAPI"][c]
            vs_naive = adaptive / max(naive["rate"], 1e-9)
            naive_ok &= vs_naive >= 1.0
            print(f"      adaptive / naive ORT+FastAPI (one session.run per request, concurrent) = "
                  f"{vs_naive:.2f}x; p95 {naive['p95']:.0f} ms vs "
                  f"{results['http']['adaptive'][c]['p95']:.0f} ms")
        if "naive, uvicorn auto" in results["http"]:
            auto = results["http"]["naive, uvicorn auto"][c]
            print(f"      adaptive / naive on uvicorn's own stack (httptools/uvloop) = "
                  f"{adaptive / max(auto['rate'], 1e-9):.2f}x")
        print(f"      per CPU-second: adaptive / best fixed = {per['adaptive'][c]['per_cpu_s'] / best_cpu:.3f}; "
              f"adaptive / no batching = {per['adaptive'][c]['per_cpu_s'] / per['no batching'][c]['per_cpu_s']:.2f}x")
    if rss:
        print(f"embeddings service RSS (adaptive server, after the runs): {rss[0]:.0f} MB now, {rss[1]:.0f} MB peak"
              f" (target <= 200 MB)")
        results["rss_mb"] = rss
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print("targets: " + ("met" if ok else "NOT met") + " (adaptive >= 0.95 x best fixed at every c; >= 3x no batching at c=32)")
    if "naive ORT+FastAPI" in results["http"]:
        print("target vs the naive deployment: " + ("met" if naive_ok else "NOT met")
              + " (adaptive >= 1.0x naive ORT+FastAPI at every c, same run)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
