"""`liteinfer profile` (= `python hw_profiler.py`) and `liteinfer doctor`.

profile: probe + library match + a short real measurement -> device_config.json.
doctor:  what was found, whether the config still fits this machine, and concrete advice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.profile.doctor import add_tip_args, apply_tips, tip_report

TUNING = "docs/tuning.md"
HARDWARE = "docs/hardware"
# Sections of the tuning manual that doctor's advice points to (GitHub heading anchors).
SECTIONS = {
    "threads": f"{TUNING}#1-threads-physical-cores-and-fewer-when-the-machine-is-shared",
    "kv": f"{TUNING}#5-kv-cache-type-enginetype_k--enginetype_v",
    "memory": f"{TUNING}#7-size-enginen_ctx-for-the-real-load",
    "mlock": f"{TUNING}#8-mmap-and-mlock-engineuse_mmap-engineuse_mlock",
    "power": f"{TUNING}#10-cpu-power-policy-governor-epp-and-frequency-limits",
    "build": f"{TUNING}#12-build-and-runtime-details",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="probe this machine, measure, write device_config.json")
    add_profile_args(p)
    p.set_defaults(func=profile_main)
    d = sub.add_parser("doctor", help="what liteinfer sees on this machine, and advice")
    d.add_argument("--config", default=None, help="device_config.json to check (default: ./device_config.json if "
                   "present, and only when checking this machine, not a --root tree)")
    d.add_argument("--root", default="/", help=argparse.SUPPRESS)  # a recorded fixture tree
    d.add_argument("--json", action="store_true", help="machine-readable output")
    add_tip_args(d)  # the tip base: --model, --server, --apply (profile/doctor.py)
    d.set_defaults(func=doctor_main)


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="device_config.json", help="where to write the config")
    p.add_argument("--quick", action="store_true", help="<= ~10 s of measurement instead of ~20 s (thread sweep only when the machine is busy)")
    p.add_argument("--model", default="smollm2-135m", help="model to measure with (catalog name or .gguf)")
    p.add_argument("--no-measure", action="store_true", help="probe and library only: no engine measurement")
    p.add_argument("--json", action="store_true", help="print the probe and plan as JSON")
    p.add_argument("--record", metavar="DIR", help="also copy the probed /proc and /sys files into DIR")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)


def _print(*a) -> None:
    print(*a, file=sys.stderr)


def profile_main(args: argparse.Namespace) -> int:
    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.core.config import DeviceConfig, save_config

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.hardware.probe import summary

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.profile.planner import profile

    t0 = time.perf_counter()
    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise LiteInferError(f"{out} is a folder; give a file name for the config")
    if args.record:
        # on use: keeps `liteinfer --help` fast
        from liteinfer.hardware.record import record

        n = record(args.record)
        _print(f"recorded {n} files into {args.record}")
    log = (lambda *a: None) if args.json else _print
    if args.root != "/" and not Path(args.root).is_dir():
        raise LiteInferError(f"--root {args.root}: no such folder")
    p, best, measurements, plan = profile(model=args.model, quick=args.quick, measure_engine=not args.no_measure,
                                          root=args.root, log=log)
    cfg: DeviceConfig = plan.config
    cfg.device["profile_seconds"] = round(time.perf_counter() - t0, 1)
    save_config(cfg, out)
    if args.json:
        print(json.dumps({"probe": p.model_dump(), "config": cfg.model_dump()}, indent=2))
        return 0
    for line in summary(p):
        _print(line)
    if best is not None:
        _print(f"match:   {best.entry.name} ({best.entry.id}), score {best.score:.2f} = {best.closeness}"
               + (f"; {'; '.join(best.reasons)}" if best.reasons else ""))
    _print("plan:")
    for r in plan.reasons:
        _print(f"  - {r}")
    e, s = cfg.engine, cfg.scheduler
    _print(f"wrote {out}: threads {e.n_threads}, max_batch {s.max_batch}, n_ctx {e.n_ctx} ({e.type_k} KV), "
           f"queue {cfg.server.max_queue}, power {cfg.power.profile} "
           f"[{cfg.device['profile_seconds']} s]")
    print(out)
    return 0


# --- doctor -------------------------------------------------------------------------------


def advice(p, cfg=None, load_avg: float | None = None) -> list[dict[str, str]]:
    """Concrete advice for this machine (and its config), each with the doc section it links."""
    out: list[dict[str, str]] = []

    def add(topic: str, text: str, doc: str) -> None:
        out.append({"topic": topic, "advice": text, "see": doc})

    c = p.cpu
    cores = p.usable_cores
    if load_avg is not None and load_avg > 0.5 * max(1, cores):
        add("load", f"load average {load_avg:.1f} on {cores} usable cores: llama.cpp threads wait for each other "
            "at every step, so other busy processes slow inference far more than their share; "
            "run liteinfer on an otherwise idle machine or lower n_threads", SECTIONS["threads"])
    if c.big_little:
        big = max(c.clusters, key=lambda k: (k.capacity or 0, k.max_freq_mhz or 0))
        cpus = ",".join(str(i) for i in big.cpus)
        add("threads", f"big.LITTLE CPU: run on the {len(big.cpus)} {big.core or 'big'} cores only "
            f"(n_threads={c.big_cores()}, and `taskset -c {cpus} liteinfer serve ...`)", SECTIONS["threads"])
    if c.smt:
        add("threads", f"SMT: {c.logical_cores} threads on {c.physical_cores} cores; hyperthreads share the vector "
            f"units, keep n_threads <= {c.physical_cores}", SECTIONS["threads"])
    if p.container.cpu_quota is not None and p.container.cpu_quota % 1:
        add("container", f"fractional CPU quota {p.container.cpu_quota:g}: the kernel throttles the last partial "
            f"core mid-step; use n_threads={max(1, int(p.container.cpu_quota))} or an integer --cpus",
            f"{HARDWARE}/index.md#containers")
    if p.container.memory_limit_mb:
        add("container", f"cgroup memory limit {p.container.memory_limit_mb} MB (host has {p.memory.total_mb} MB): "
            "the planner sizes the model and KV cache to the limit, not the host", f"{HARDWARE}/index.md#containers")
    if c.arch == "x86_64" and "avx2" not in c.isa:
        add("isa", "no AVX2: llama.cpp uses SSE kernels; use Q4_0 and models up to ~0.5B, and build "
            "llama-cpp-python on this machine (GGML_NATIVE=ON)", f"{HARDWARE}/intel-amd-mini.md")
    # the llama.cpp bindings load only on an AMX CPU, where the build decides (memory)
    from liteinfer.engines.llama_cpp_lazy import repack_buffers_safe

    if "amx" in c.isa and not repack_buffers_safe(cpu_has_amx=True):
        add("isa", "AMX CPU and a llama.cpp build with AMX code: its AMX repack buffers crash multi-token "
            "decode; keep engine.use_extra_bufts false (the planner does), or rebuild with AMX off "
            "(scripts/build_llama_wheel.sh) to keep the repacked kernels", SECTIONS["build"])
    if c.arch in ("aarch64", "arm64") and "dotprod" not in c.isa:
        add("isa", "no dotprod (Armv8.0 cores): Q4_0 is the fastest quant type; K-quants run slower here",
            f"{HARDWARE}/raspberry-pi.md")
    if p.effective_memory_mb < 2048:
        add("memory", f"{p.effective_memory_mb} MB usable: stay with sub-1B models, q8_0 KV cache and a small n_ctx",
            SECTIONS["kv"])
    if p.memory.swap_total_mb == 0 and p.memory.total_mb < 8192:
        add("memory", "no swap: a memory spike kills the server (OOM); add zram swap (e.g. zram-tools) so "
            "bursts do not, while weights stay in RAM", SECTIONS["memory"])
    if p.memory.memlock_limit_mb is not None and p.memory.memlock_limit_mb < 1024:
        add("memory", f"RLIMIT_MEMLOCK is {p.memory.memlock_limit_mb} MB: mlock of the weights is off; raise it "
            "(`ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit) to keep weights resident",
            SECTIONS["mlock"])
    for a in p.compute_accelerators():
        if a.api == "cuda":
            add("accelerator", f"{a.name}: this build runs llama.cpp on the CPU; a CUDA build of llama-cpp-python "
                "(CMAKE_ARGS=-DGGML_CUDA=on) can offload the model to the GPU", f"{HARDWARE}/jetson.md")
        elif a.api == "metal":
            add("accelerator", f"{a.name}: llama-cpp-python builds with Metal on macOS; the GPU runs the model",
                f"{HARDWARE}/apple.md")
        elif a.api == "rknn":
            add("accelerator", f"{a.name}: runs RKNN models (rknn-toolkit2 / rkllm), not GGUF; liteinfer serves "
                "GGUF on the CPU's big cores", f"{HARDWARE}/rockchip.md")
        elif a.api in ("hailort", "edgetpu"):
            add("accelerator", f"{a.name}: a vision/one-shot accelerator (HailoRT / Edge TPU); LLMs stay on the CPU",
                f"{HARDWARE}/index.md#accelerators")
        elif a.api == "openvino":
            add("accelerator", f"{a.name}: ONNX Runtime's OpenVINO execution provider can run the one-shot models "
                "on it", f"{HARDWARE}/intel-amd-mini.md")
    pw = p.power
    if not pw.cpufreq:
        add("power", "no cpufreq interface (VM or locked firmware): the power profile stays 'unchanged'",
            SECTIONS["power"])
    elif pw.governor in ("powersave",) and pw.scaling_driver != "intel_pstate":
        add("power", "governor 'powersave' pins the lowest clock: use schedutil/ondemand or `liteinfer power`",
            SECTIONS["power"])
    if not pw.energy_meter:
        add("power", "no energy meter (RAPL/hwmon/vcgencmd): tokens per joule cannot be measured here",
            SECTIONS["power"])
    if cfg is not None:
        e = cfg.engine
        if e.n_threads and e.n_threads > cores:
            add("config", f"engine.n_threads={e.n_threads} but only {cores} cores are usable: threads will "
                "time-share cores and every step waits for the slowest", SECTIONS["threads"])
        model_mb = (cfg.device.get("measurements") or {}).get("model_bytes", 0) / 2**20
        if e.use_mlock and p.memory.memlock_limit_mb is not None and model_mb > p.memory.memlock_limit_mb:
            add("config", "engine.use_mlock is on but RLIMIT_MEMLOCK is too small: llama.cpp will warn and skip it",
                SECTIONS["mlock"])
    return out


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def default_config(root: str = "/") -> str | None:
    """The config doctor checks when none is named: ./device_config.json, the file `make run`
    writes, and only when doctor looks at this machine (a --root tree is another machine)."""
    if root != "/":
        return None
    return "device_config.json" if Path("device_config.json").is_file() else None


def doctor_main(args: argparse.Namespace) -> int:
    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.core.config import load_config

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.hardware.devices import best_match

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.hardware.fingerprint import stale_fields

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.hardware.probe import probe, summary

    p = probe(args.root)
    path = args.config or default_config(args.root)
    if args.config and not Path(args.config).exists():
        raise LiteInferError(f"{args.config}: no such file (write one with `python hw_profiler.py -o {args.config}`)")
    cfg = load_config(path) if path else None  # invalid -> LiteInferError naming the field
    stale = stale_fields(cfg, p) if cfg is not None else []
    best = best_match(p)
    tips = advice(p, cfg, _load_avg() if args.root == "/" else None)
    if stale:  # a finding, not a failure: the server still serves on it (and warns)
        tips.insert(0, {"topic": "config", "advice": f"{path} was planned for another machine or before a "
                        f"limit changed ({'; '.join(stale)}): its threads and sizes are not this machine's; "
                        "re-run `python hw_profiler.py`", "see": SECTIONS["threads"]})
    report = tip_report(args, p, cfg)
    if args.json:
        print(json.dumps({"probe": p.model_dump(), "match": None if best is None else {
            "id": best.entry.id, "score": best.score, "closeness": best.closeness, "reasons": best.reasons},
            "config": path, "stale": stale, "advice": tips, **report.to_json()}, indent=2))
    else:
        for line in summary(p):
            print(line)
        if best is not None:
            print(f"match:   {best.entry.name} ({best.entry.id}), score {best.score:.2f} = {best.closeness}")
            if best.closeness == "weak":
                print(f"         no close entry in the device library: see {HARDWARE}/adding-a-device.md")
        if cfg is not None:
            e, sc = cfg.engine, cfg.scheduler
            when = cfg.device.get("profiled_at", "unknown time")
            print(f"config:  {path}: threads {e.n_threads or 'auto'}, max_batch {sc.max_batch}, n_ctx {e.n_ctx} "
                  f"({e.type_k} KV), mlock {'on' if e.use_mlock else 'off'}, power {cfg.power.profile}; "
                  f"profiled {when}")
            if cfg.device.get("recommended_model"):
                print(f"model:   largest useful here: {cfg.device['recommended_model']} (config serves {cfg.model})")
        else:
            print("config:  none (run `python hw_profiler.py -o device_config.json`)")
        print("advice:")
        for t in tips:
            print(f"  - [{t['topic']}] {t['advice']} (see {t['see']})")
        for note in p.notes:
            print(f"  - [probe] {note}")
        for line in report.lines():
            print(line)
    if args.apply:
        apply_tips(report, cfg, path, args.yes)
    return 0
