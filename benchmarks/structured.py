"""Grammar-constrained generation against unconstrained, same server, same run.

    .venv/bin/python benchmarks/structured.py [--levels 1,16] [--max-tokens 48] [--rounds 3]

One liteinfer server; the same streamed chat requests (benchmarks/loadgen.py, raw HTTP) in
four modes, interleaved round by round so a slow spell of the machine hits every mode alike:

- plain:        no constraint (the baseline);
- json_schema:  response_format json_schema (a grammar from the schema);
- tools_prompt: no constraint, but the system prompt a tool request gets (the tools described
                in it: templates without tool support, the default model's): the baseline
                for the next one, so the ratio measures the grammar, not the longer prompt;
- tool_call:    tools + tool_choice "required" (that prompt, and a grammar for the call).

Every schema asks for more than --max-tokens tokens of JSON, so every reply runs to the limit
in every mode: tok/s compares the same amount of decoding. Prints tok/s per mode and level,
mean tokens per reply, and the ratios the structured-output issue targets (>= 0.85 at 1 and
at 16 clients). Notes the load average before, and the cores other processes took during the
run: on two cores a busy machine halves the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import LoadResult, run_load  # noqa: E402
from serve import PY, Server, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FACTS = {"type": "object", "properties": {
    "number": {"type": "integer"},
    "facts": {"type": "array", "items": {"type": "string"}, "minItems": 12}},
    "required": ["number", "facts"]}
TOOL = {"type": "function", "function": {"name": "record_facts", "description": "Store facts about a number",
                                         "parameters": FACTS}}


def tools_system_prompt() -> str:
    """The system prompt the server gives a tool request on a template without tools."""
    sys.path.insert(0, str(ROOT))
    from liteinfer.server.tools import plan_chat

    plan = plan_chat([{"role": "user", "content": "x"}], "", [TOOL], "required")
    return plan.messages[0]["content"]


MODES = {
    "plain": ({}, False),
    "json_schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "facts", "schema": FACTS}}},
                    False),
    "tools_prompt": ({}, True),
    "tool_call": ({"tools": [TOOL], "tool_choice": "required"}, False),
}


def busy_cores() -> float:
    """CPU seconds all processes have used so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu(pid: int) -> float:
    """CPU seconds of this process and the server (with its children)."""
    t = os.times()
    mine = t.user + t.system
    try:
        p = psutil.Process(pid)
        for q in [p, *p.children(recursive=True)]:
            c = q.cpu_times()
            mine += c.user + c.system
    except psutil.Error:
        pass
    return mine


def profile(model_path: str, threads: int, levels: list[int], n_tokens: int, shortlist: bool = True) -> None:
    """Where a constrained step's time goes, in-process on the engine the server runs: decode
    (llama_decode), sampling, and how often the grammar rejected the plain pick (each rejection
    is a pass of the grammar over the whole vocabulary)."""
    import time as _t

    from liteinfer.core.config import EngineSettings
    from liteinfer.engines.grammar import json_schema_grammar
    from liteinfer.engines.llama import LlamaEngine, SamplingParams
    from liteinfer.server.tools import plan_chat

    eng = LlamaEngine(model_path, EngineSettings(n_ctx=4096, n_seq_max=max(levels) + 1, n_threads=threads,
                                                 split_q4_1=True))
    stats = {"sample_s": 0.0, "checks": 0, "rejected": 0}
    sample, allows = eng._sample, eng._grammar_allows

    def timed_sample(seq, idx):
        t = _t.perf_counter()
        try:
            return sample(seq, idx)
        finally:
            stats["sample_s"] += _t.perf_counter() - t

    def counted_allows(grammar, token):
        ok = allows(grammar, token)
        stats["checks"] += 1
        stats["rejected"] += not ok
        return ok

    eng._sample, eng._grammar_allows = timed_sample, counted_allows
    if not shortlist:  # every rejection runs the grammar over the whole vocabulary
        eng._shortlist_sample = lambda seq, idx: None
    tool_plan = plan_chat([{"role": "user", "content": "x"}], "", [TOOL], "required")
    grammars = {"plain": None, "json_schema": json_schema_grammar(FACTS), "tool_call": tool_plan.grammar}
    print(f"{'mode':<12}{'c':>4}{'tok/s':>8}{'ms/step':>9}{'sample ms/step':>16}{'rejected':>10}")
    for c in levels:
        for mode, grammar in grammars.items():
            seqs = []
            for i in range(c):
                msgs = [{"role": "user", "content": f"Question {i}: tell me something about the number {i * 7}."}]
                if mode == "tool_call":
                    msgs.insert(0, tool_plan.messages[0])
                seqs.append(eng.start(eng.chat_tokens(msgs), SamplingParams(max_tokens=n_tokens, temperature=0,
                                                                             grammar=grammar)))
            for q in seqs:  # prompts, one at a time (n_batch), not timed
                eng.step([(q, q.n_pending)])
            stats.update(sample_s=0.0, checks=0, rejected=0)
            live, steps, made, t0 = list(seqs), 0, 0, _t.perf_counter()
            while live and steps < n_tokens:
                out = eng.step([(q, 1) for q in live])
                steps, made = steps + 1, made + len(out)
                live = [q for q, tok in out if not eng.is_eog(tok)]
            secs = _t.perf_counter() - t0
            for q in seqs:
                eng.release(q, keep_prefix=False)
            rej = f"{stats['rejected']}/{stats['checks']}" if grammar else "-"
            print(f"{mode:<12}{c:>4}{made / secs:>8.1f}{1000 * secs / steps:>9.1f}"
                  f"{1000 * stats['sample_s'] / steps:>16.2f}{rej:>10}", flush=True)
    eng.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3, help="slices per mode and level, modes interleaved")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--json", default=None, help="also write all rows here")
    ap.add_argument("--profile", action="store_true",
                    help="instead: in-process on the engine, time decode vs sampling and count grammar rejections")
    ap.add_argument("--no-shortlist", action="store_true",
                    help="with --profile: without the 64-token shortlist (the full-vocabulary grammar pass)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from liteinfer.core.catalog import resolve_llm
    from liteinfer.hardware.cores import usable_cores

    model_path = str(resolve_llm(args.model))
    threads = args.threads or usable_cores()
    levels = [int(x) for x in args.levels.split(",")]
    system = tools_system_prompt()
    load_before = os.getloadavg()[0]
    print(f"model {model_path}\nthreads {threads}, load average before start {load_before:.2f}"
          + ("  WARNING: machine busy, numbers will be low and noisy" if load_before > 0.5 else ""), flush=True)
    if args.profile:
        profile(model_path, threads, levels, args.max_tokens, shortlist=not args.no_shortlist)
        return 0

    port = free_port()
    srv = Server("liteinfer", [PY, "-m", "liteinfer", "serve", "-m", model_path, "--threads", str(threads),
                               "--ctx", str(args.ctx), "--max-queue", "256", "--port", str(port)], port)
    rows = []
    t0, busy0, own0 = time.monotonic(), busy_cores(), own_cpu(srv.proc.pid)
    try:
        def slice_(mode: str, c: int, per_client: int) -> LoadResult:
            extra, tools_prompt = MODES[mode]
            return asyncio.run(run_load("127.0.0.1", port, c, per_client, args.max_tokens,
                                        system=system if tools_prompt else None, extra=extra))

        for mode in MODES:  # warm-up: grammar paths, prefix cache of the tools prompt
            slice_(mode, 2, 1)
        names = list(MODES)
        for c in levels:
            per_client = max(2, 16 // c)
            total = {m: LoadResult(c) for m in names}
            rounds: dict[str, list[float]] = {m: [] for m in names}
            for r in range(args.rounds):
                for mode in names[r % len(names):] + names[: r % len(names)]:
                    res = slice_(mode, c, per_client)
                    t = total[mode]
                    t.requests, t.errors, t.tokens = t.requests + res.requests, t.errors + res.errors, t.tokens + res.tokens
                    t.seconds += res.seconds
                    t.ttft += res.ttft
                    t.latency += res.latency
                    rounds[mode].append(round(res.tok_per_s, 1))
            for mode in names:
                t = total[mode]
                row = {"mode": mode, **t.row(), "tokens/reply": round(t.tokens / max(t.requests, 1), 1),
                       "tok/s_rounds": rounds[mode]}
                rows.append(row)
                print(json.dumps(row), flush=True)
        # the CPU the rest of the machine took meanwhile: the load average counts our own server
        others = (busy_cores() - busy0 - (own_cpu(srv.proc.pid) - own0)) / (time.monotonic() - t0)
    finally:
        srv.stop()

    print()
    print(f"{'mode':<14}{'c':>4}{'req/s':>8}{'tok/s':>8}{'tok/req':>9}{'ttft50':>8}{'ttft95':>8}{'err':>5}")
    for r in rows:
        print(f"{r['mode']:<14}{r['c']:>4}{r['req/s']:>8}{r['tok/s']:>8}{r['tokens/reply']:>9}"
              f"{r['ttft_p50_ms']:>8}{r['ttft_p95_ms']:>8}{r['errors']:>5}")
    print()

    def get(mode: str, c: int) -> dict:
        return next(r for r in rows if r["mode"] == mode and r["c"] == c)

    for c in levels:
        plain, prompt = get("plain", c)["tok/s"], get("tools_prompt", c)["tok/s"]
        js, tool = get("json_schema", c)["tok/s"], get("tool_call", c)["tok/s"]
        print(f"c={c}: json_schema / plain = {js / max(plain, 1e-9):.2f}; "
              f"tool_call / tools_prompt = {tool / max(prompt, 1e-9):.2f} "
              f"(tool_call / plain = {tool / max(plain, 1e-9):.2f})  target >= 0.85")
    print(f"load average before: {load_before:.2f}; other processes used {max(others, 0):.2f} cores on average "
          f"during the run (of {os.cpu_count()})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
