"""`liteinfer bench`: the standard inference benchmark of the configured model.

Runs a chat workload through the serving path, the scheduler and its adaptive controller
(liteinfer.tune.trial, the same measurement the tuner uses; `--runner engine` for the
engine-only loop) and prints generated tok/s, TTFT and request latency percentiles, peak
memory (RSS) and J/token when an energy meter exists. Then the same workload from 1, 2, 4 ...
clients at a time (`--concurrency`), and two PNGs (`--plots PREFIX`, matplotlib, the `plots`
extra): PREFIX.latency.png (TTFT and latency CDFs, one curve per concurrency) and
PREFIX.concurrency.png (generated tok/s and TTFT p95 against requests in flight).

`--perf` re-runs this command under `perf stat`, with the counters switched on only around
the measured run (perf's --delay=-1 + a control FIFO), and reports IPC, cycles,
instructions and cache misses per generated token. Where the CPU's counters are not
available (most VMs) it says so and reports perf's software counters (CPU time, context
switches) instead; without perf it runs the plain benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from liteinfer.core.errors import LiteInferError

HW_EVENTS = ["cycles", "instructions", "cache-references", "cache-misses", "branch-misses"]
SW_EVENTS = ["task-clock", "context-switches", "cpu-migrations", "page-faults"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="inference benchmark: tok/s, latency percentiles, memory, J/token")
    p.add_argument("-m", "--model", default=None, help="model name or GGUF path (default: the config's model)")
    p.add_argument("--config", default=None, help="device_config.json (default: ./device_config.json if present)")
    p.add_argument("--workload", default=None, metavar="JSONL", help="requests file (default: built-in chat mix)")
    p.add_argument("--requests", type=int, default=8, help="requests in the built-in chat mix")
    p.add_argument("--max-tokens", type=int, default=None, help="override each request's max_tokens")
    p.add_argument("--threads", type=int, default=None, help="override engine.n_threads")
    p.add_argument("--max-batch", type=int, default=None, help="override scheduler.max_batch")
    p.add_argument("--runner", choices=["scheduler", "engine"], default="scheduler",
                   help="scheduler: the serving path, continuous batching + the adaptive controller "
                        "(default); engine: the engine-only loop, for kernel questions")
    p.add_argument("--concurrency", default=None, metavar="N,N,...",
                   help="also run the workload from this many clients at a time, each level (default: "
                        "1, 2, 4 ... below --requests; '' for none); all at once is always the main run")
    p.add_argument("--plots", default="liteinfer-bench", metavar="PREFIX",
                   help="write PREFIX.latency.png and PREFIX.concurrency.png (default: ./liteinfer-bench.*)")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (and no concurrency levels unless asked)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--perf", action="store_true", help="hardware counters via perf stat (IPC, cache misses/token)")
    p.add_argument("--perf-ctl", default=None, help=argparse.SUPPRESS)  # set by the --perf parent
    p.set_defaults(func=cmd_bench)


def _config(args: argparse.Namespace):
    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.core.config import load_config

    path = args.config or ("device_config.json" if Path("device_config.json").exists() else None)
    if args.config and not Path(args.config).exists():
        raise LiteInferError(f"config file {args.config} not found")
    cfg = load_config(path)
    if args.model:
        cfg.model = args.model
    if args.threads:
        cfg.engine.n_threads = args.threads
    if args.max_batch:
        cfg.scheduler.max_batch = args.max_batch
        cfg.engine.n_seq_max = max(cfg.engine.n_seq_max, args.max_batch)
    return cfg, path


def _requests(args: argparse.Namespace):
    # on use: keeps `liteinfer --help` fast
    from liteinfer.tune.workload import chat_mix, load_workload

    if args.requests < 1:
        raise LiteInferError("--requests must be at least 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise LiteInferError("--max-tokens must be at least 1")
    if not args.workload:
        return chat_mix(args.requests, args.max_tokens)
    reqs = load_workload(args.workload)
    for r in reqs:
        r.max_tokens = args.max_tokens or r.max_tokens
    return reqs


@contextlib.contextmanager
def _perf_region(ctl: str):
    """Tell the parent's `perf stat` to count only inside this block (control FIFOs)."""
    ctl_path, ack_path = ctl.split(",")
    # O_RDWR never blocks on a FIFO, whoever holds the other end.
    ctl_fd, ack_fd = os.open(ctl_path, os.O_RDWR), os.open(ack_path, os.O_RDWR)

    def send(cmd: bytes) -> None:
        os.write(ctl_fd, cmd + b"\n")
        os.read(ack_fd, 16)  # "ack\n": counting has really switched

    try:
        send(b"enable")
        yield
        send(b"disable")
    finally:
        os.close(ctl_fd)
        os.close(ack_fd)


def _levels(args: argparse.Namespace) -> list[int]:
    """Concurrency levels besides all-at-once: --concurrency, else powers of two below
    --requests when plots are wanted."""
    if args.concurrency is None:
        return [] if args.no_plots else [1 << k for k in range(16) if 1 << k < args.requests]
    try:
        levels = sorted({int(x) for x in args.concurrency.replace(" ", "").split(",") if x})
    except ValueError:
        raise LiteInferError(f"--concurrency {args.concurrency!r}: comma-separated client counts, e.g. 1,2,4") from None
    if any(c < 1 for c in levels):
        raise LiteInferError("--concurrency: each level is at least 1 client")
    return levels


def run_bench(args: argparse.Namespace) -> dict:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.core.catalog import resolve_llm

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.tune.trial import measure_config

    cfg, cfg_path = _config(args)
    model = resolve_llm(cfg.model)
    reqs = _requests(args)
    region = (lambda: _perf_region(args.perf_ctl)) if args.perf_ctl else None
    m = measure_config(model, cfg, reqs, region=region, runner=args.runner, sweep=_levels(args))
    m["rss_peak_mb"] = max(m["rss_peak_mb"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    m.update(model=cfg.model, model_file=Path(model).name, config=cfg_path, max_batch=cfg.scheduler.max_batch,
             kv_type=f"{cfg.engine.type_k}/{cfg.engine.type_v}", flash_attn=cfg.engine.flash_attn)
    if m["meter"] is None:
        m["energy"] = "unavailable"
    return m


def cmd_bench(args: argparse.Namespace) -> int:
    if args.perf and not args.perf_ctl:
        return _bench_under_perf(args)
    m = run_bench(args)
    _plots(m, args)
    if args.json:
        print(json.dumps(m))
    else:
        print_report(m)
    return 0


def _plots(m: dict, args: argparse.Namespace) -> None:
    """The two PNGs; m["plots"] lists what was written. matplotlib missing: a note, not a failure."""
    if args.no_plots or not args.plots:
        return
    try:
        # on use: matplotlib (the plots extra) loads only here
        from liteinfer.tune.plots import plot_concurrency, plot_latency_cdf

        runs = [*m.get("sweep", []), m]
        where = (f"{m['model_file']}, {m['runner']} runner, {m['threads']} threads, max_batch {m['max_batch']}, "
                 f"load average {m['loadavg_1m']:.1f} on {m['cpus']} CPUs")
        m["plots"] = [
            str(plot_latency_cdf(runs, f"liteinfer bench: latency CDF ({where})", args.plots + ".latency.png")),
            str(plot_concurrency(runs, f"liteinfer bench: throughput vs concurrency\n({where})",
                                 args.plots + ".concurrency.png")),
        ]
    except ImportError:
        print("plots skipped: matplotlib is not installed: pip install 'liteinfer[plots]'", file=sys.stderr)
    except LiteInferError as e:  # the optional-part message
        print(f"plots skipped: {e}", file=sys.stderr)


def _ms(v: float) -> str:
    return f"{v:,.0f} ms"


def print_report(m: dict) -> None:
    print(f"liteinfer bench: {m['model']} ({m['model_file']}), {m['threads']} threads, max_batch {m['max_batch']}, "
          f"KV {m['kv_type']}, flash_attn {m['flash_attn']}; config {m['config'] or '(defaults)'}")
    print(f"workload      {m['requests']} requests ({m['runner']} runner), {m['prompt_tokens']} prompt + {m['generated_tokens']} "
          f"generated tokens in {m['seconds']:.2f} s ({m['steps']} engine steps of {m['mean_batch']:.1f} sequences "
          f"on average; model load {m['load_s']:.2f} s)")
    print(f"throughput    {m['tok_s']:.1f} generated tok/s  ({m['total_tok_s']:.1f} tok/s prompt + generated)")
    print(f"TTFT          p50 {_ms(m['ttft_p50_ms'])}  p95 {_ms(m['ttft_p95_ms'])}")
    print(f"latency       p50 {_ms(m['latency_p50_ms'])}  p95 {_ms(m['latency_p95_ms'])}  "
          f"p99 {_ms(m['latency_p99_ms'])}  (all requests arrive at once)")
    print(f"inter-token   mean {m['itl_mean_ms']:.1f} ms")
    print(f"peak memory   {m['rss_peak_mb']:.0f} MB RSS")
    if m["j_per_token"] is not None:
        print(f"energy        {m['j_per_token']:.3f} J/token, {m['watts']:.1f} W average ({m['meter']})")
    else:
        print("energy        unavailable (no RAPL, hwmon, NVML or Pi PMIC meter here; see `liteinfer power status`)")
    busy = m["loadavg_1m"] > 0.5 * (m.get("cpus") or 1)
    print(f"load          1-min load average {m['loadavg_1m']:.1f} on {m.get('cpus')} CPUs"
          + (": other work is running, these numbers are lower bounds" if busy else ""))
    if m.get("sweep"):
        print("concurrency   clients   tok/s   TTFT p50   TTFT p95   latency p95   seqs/step")
        for r in [*m["sweep"], m]:
            print(f"              {r['concurrency']:>7} {r['tok_s']:>7.1f} {_ms(r['ttft_p50_ms']):>10} "
                  f"{_ms(r['ttft_p95_ms']):>10} {_ms(r['latency_p95_ms']):>13} {r['mean_batch']:>11.1f}")
    for path in m.get("plots", []):
        print(f"plot          {path}")
    if m.get("perf"):
        _print_perf(m["perf"])


# ---- perf -------------------------------------------------------------------------------

def parse_perf_csv(text: str) -> dict[str, float | None]:
    """`perf stat -x,` output -> {event: count}; None where perf says not supported/counted."""
    out: dict[str, float | None] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split(",")
        if len(f) < 3:
            continue
        event = f[2].split(":")[0]  # "cycles:u" -> "cycles"
        try:
            out[event] = float(f[0])
        except ValueError:  # "<not supported>", "<not counted>"
            out[event] = None
    return out


def perf_metrics(counts: dict[str, float | None], tokens: int) -> dict:
    def per_tok(e: str) -> float | None:
        v = counts.get(e)
        return v / tokens if v is not None and tokens else None

    cyc, ins = counts.get("cycles"), counts.get("instructions")
    refs, miss = counts.get("cache-references"), counts.get("cache-misses")
    task_ms = counts.get("task-clock")
    return {
        "ipc": ins / cyc if ins and cyc else None,
        "cycles_per_token": per_tok("cycles"),
        "instructions_per_token": per_tok("instructions"),
        "cache_misses_per_token": per_tok("cache-misses"),
        "cache_miss_rate": miss / refs if miss is not None and refs else None,
        "branch_misses_per_token": per_tok("branch-misses"),
        "cpu_ms_per_token": per_tok("task-clock"),
        "context_switches_per_token": per_tok("context-switches"),
        "task_clock_ms": task_ms,
        "counts": counts,
    }


def perf_support(perf: str) -> tuple[bool, str]:
    """(hardware counters usable, why not). `perf stat -e instructions true` is the probe."""
    try:
        r = subprocess.run([perf, "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"perf did not run: {e}"
    if r.returncode != 0:
        return False, f"perf stat failed: {(r.stderr.strip().splitlines() or ['?'])[-1]} (perf_event_paranoid?)"
    if parse_perf_csv(r.stderr).get("instructions") is None:
        return False, ("the CPU's hardware counters are not supported here (`perf stat -e instructions true` "
                       "says <not supported>: a VM without PMU pass-through)")
    return True, ""


def _child_argv(args: argparse.Namespace, ctl: str) -> list[str]:
    argv = [sys.executable, "-m", "liteinfer", "bench", "--json", "--perf-ctl", ctl,
            "--requests", str(args.requests), "--runner", args.runner, "--no-plots",
            "--concurrency", ",".join(map(str, _levels(args)))]
    for flag, value in (("-m", args.model), ("--config", args.config), ("--workload", args.workload),
                        ("--max-tokens", args.max_tokens), ("--threads", args.threads),
                        ("--max-batch", args.max_batch)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _bench_under_perf(args: argparse.Namespace) -> int:
    perf = shutil.which("perf")
    if not perf:
        print("perf: not found (Debian/Ubuntu: apt-get install linux-perf): running the plain benchmark",
              file=sys.stderr)
        args.perf = False
        return cmd_bench(args)
    hw, why = perf_support(perf)
    if not hw:
        print(f"perf: {why}; reporting software counters only (CPU time, context switches)", file=sys.stderr)
    events = (HW_EVENTS if hw else []) + SW_EVENTS
    with tempfile.TemporaryDirectory(prefix="liteinfer-perf-") as tmp:
        ctl, ack, out = Path(tmp, "ctl"), Path(tmp, "ack"), Path(tmp, "perf.csv")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd = [perf, "stat", "-x,", "-o", str(out), "--delay=-1", f"--control=fifo:{ctl},{ack}",
               "-e", ",".join(events), "--"] + _child_argv(args, f"{ctl},{ack}")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if r.returncode != 0:
            return r.returncode  # the child printed its own error line
        m = json.loads(r.stdout.strip().splitlines()[-1])
        counts = parse_perf_csv(out.read_text())
    _plots(m, args)
    m["perf"] = perf_metrics(counts, m["generated_tokens"])
    m["perf"]["hardware_counters"] = hw
    if not hw:
        m["perf"]["unavailable"] = why
    if args.json:
        print(json.dumps(m))
    else:
        print_report(m)
    return 0


def _print_perf(p: dict) -> None:
    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    print("perf          (counted only during the measured run, all threads; per generated token)")
    if p.get("hardware_counters"):
        print(f"  IPC {fmt(p['ipc'], '.2f')}   cycles/token {fmt(p['cycles_per_token'], ',.0f')}   "
              f"instructions/token {fmt(p['instructions_per_token'], ',.0f')}")
        print(f"  cache misses/token {fmt(p['cache_misses_per_token'], ',.0f')}   "
              f"miss rate {fmt(p['cache_miss_rate'], '.1%')}   branch misses/token "
              f"{fmt(p['branch_misses_per_token'], ',.0f')}")
    else:
        print(f"  hardware counters unavailable: {p.get('unavailable')}")
    print(f"  CPU time/token {fmt(p['cpu_ms_per_token'], '.2f')} ms   "
          f"context switches/token {fmt(p['context_switches_per_token'], '.2f')}")


def main(argv: list[str] | None = None) -> int:
    """`python inference_benchmark.py [options]` = `liteinfer bench [options]`."""
    # on use: keeps `liteinfer --help` fast
    from liteinfer.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
