"""Load time of an encrypted model (decrypted into a memfd) against the same model's clear file.

    .venv/bin/python benchmarks/encrypted_load.py [--model smollm2-135m] [--rounds 7] [--verify-hash]

Needs the encrypt plugin importable (`pip install ./plugins/encrypt`, or PYTHONPATH=plugins/encrypt).
Each round loads the clear GGUF and the .lienc in turn, in fresh child processes (no warm
llama.cpp state), with the same engine settings (the Q4_1 split off on both sides: an
encrypted model is served without it, see docs/security.md), and times two things: the
engine ready (file -> LlamaEngine) and the first token of a short prompt after it (the clear
file's mmap'd pages fault in on first use, the memfd's are in memory already). The files are
in the page cache for both (one warm-up each). Prints medians, the ratio (target <= 1.5x)
and the load average (two busy cores make every number here slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from liteinfer.core.config import EngineSettings
from liteinfer.engines.llama import LlamaEngine
path, verify = sys.argv[1], sys.argv[2] == "1"
settings = EngineSettings(n_ctx=1024, n_seq_max=4, split_q4_1=False)
t_import = time.perf_counter()
if path.endswith(".lienc"):
    from liteinfer_encrypt.fmt import decrypt_to_memfd
    from liteinfer_encrypt.loader import MemfdLlamaEngine, find_key
    fd, _ = decrypt_to_memfd(__import__("pathlib").Path(path), find_key(), verify)
    t_dec = time.perf_counter()
    engine = MemfdLlamaEngine(fd, path, settings)
else:
    t_dec = time.perf_counter()
    engine = LlamaEngine(path, settings)
t_ready = time.perf_counter()
from liteinfer.engines.llama import SamplingParams
seq = engine.start(engine.tokenize("The capital of France is"), SamplingParams(max_tokens=1, temperature=0))
engine.step([(seq, seq.n_pending)])  # the prompt in one step: its first token
t_first = time.perf_counter()
print(json.dumps({"decrypt": t_dec - t_import, "ready": t_ready - t_import, "first": t_first - t_import}))
"""


def _child(path: Path, env: dict, verify: bool) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if verify else "0"], capture_output=True,
                       text=True, env=env, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"child failed on {path}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--verify-hash", action="store_true",
                    help="also check the clear model's SHA-256 at load (plugins.encrypt.verify_hash; off in serve)")
    args = ap.parse_args()

    from liteinfer.core.catalog import resolve_llm

    clear = resolve_llm(args.model)
    with tempfile.TemporaryDirectory(prefix="liteinfer-encload-") as tmp:
        key, enc = Path(tmp) / "k", Path(tmp) / "model.lienc"
        env = {**os.environ, "LITEINFER_MODEL_KEY_FILE": str(key),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins/encrypt"), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "liteinfer", "encrypt", str(clear), str(enc), "--key-file", str(key),
                        "--new-key"], check=True, env=env, capture_output=True)
        verify = args.verify_hash
        _child(clear, env, verify), _child(enc, env, verify)  # page cache warm for both
        rows = {"clear": [], "encrypted": []}
        for _ in range(args.rounds):
            rows["clear"].append(_child(clear, env, verify))
            rows["encrypted"].append(_child(enc, env, verify))
    med = {side: {k: statistics.median(r[k] for r in runs) for k in ("decrypt", "ready", "first")}
           for side, runs in rows.items()}
    print(f"model {clear.name} ({clear.stat().st_size / 1e6:.0f} MB), {args.rounds} rounds, "
          f"hash check at load: {'on' if verify else 'off'}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'':<10} {'decrypt':>9} {'ready':>9} {'first token':>12}")
    for side, m in med.items():
        print(f"{side:<10} {m['decrypt'] * 1e3:>7.0f}ms {m['ready'] * 1e3:>7.0f}ms {m['first'] * 1e3:>10.0f}ms")
    ready = med["encrypted"]["ready"] / med["clear"]["ready"]
    first = med["encrypted"]["first"] / med["clear"]["first"]
    print(f"ratio encrypted/clear: ready {ready:.2f}x, to first token {first:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
