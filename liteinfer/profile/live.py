"""A running server's load, read from its /metrics over a window: the `live.*` facts.

`watch(url, window_s)` scrapes every half second; counters and histograms count what
happened between the first and the last scrape, gauges give the worst (or mean) sample.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any

from liteinfer.core.errors import LiteInferError

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                continue
    return out


def scrape(url: str, api_key: str | None = None, timeout: float = 10) -> dict[str, float]:
    req = urllib.request.Request(url.rstrip("/") + "/metrics")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return parse(r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        hint = " (the server wants an API key: --api-key)" if e.code in (401, 403) else ""
        raise LiteInferError(f"{url}/metrics: HTTP {e.code}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        raise LiteInferError(f"{url}/metrics: cannot connect ({getattr(e, 'reason', e)})") from None


def _get(s: dict[str, float], name: str, default: float | None = 0.0) -> float | None:
    return s.get(name, default)


def _sum(s: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in s.items() if k == prefix or k.startswith(prefix + "{"))


def _quantile(first: dict[str, float], last: dict[str, float], hist: str, q: float) -> float | None:
    """q-quantile of a histogram's observations between two scrapes (linear within a bucket)."""
    pat = re.compile(re.escape(hist) + r'_bucket\{(?:.*,)?le="([^"]+)"')
    buckets = []
    for k, v in last.items():
        m = pat.match(k)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, v - first.get(k, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total, target = buckets[-1][1], q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= target and total:
            if le == float("inf"):
                return prev_le
            if n == prev_n:
                return le
            return prev_le + (le - prev_le) * (target - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


def watch(url: str, window_s: float = 10.0, api_key: str | None = None, interval_s: float = 0.5) -> dict[str, Any]:
    """Scrape /metrics for `window_s` seconds and reduce it to the live facts."""
    samples = [scrape(url, api_key)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < window_s:
        time.sleep(min(interval_s, max(0.0, window_s - (time.monotonic() - t0))))
        samples.append(scrape(url, api_key))
    elapsed = max(1e-6, time.monotonic() - t0)
    return reduce(samples, elapsed)


def reduce(samples: list[dict[str, float]], elapsed: float) -> dict[str, Any]:
    first, last = samples[0], samples[-1]

    def delta(name: str) -> float:
        return _sum(last, name) - _sum(first, name)

    requests = delta("liteinfer_request_seconds_count")
    rejected = (_get(last, 'liteinfer_rejected_requests_total{reason="queue_full"}')
                - _get(first, 'liteinfer_rejected_requests_total{reason="queue_full"}'))
    limit = _get(last, "liteinfer_queue_limit", None)
    depths = [s.get("liteinfer_queue_depth", 0.0) for s in samples]
    at_limit = sum(1 for d in depths if limit and d >= limit) / len(depths)
    refused = rejected / (requests + rejected) if requests + rejected else 0.0

    def gauge(name: str, how) -> float | None:
        vals = [s[name] for s in samples if name in s and s[name] == s[name]]  # NaN != NaN
        return how(vals) if vals else None

    kv_fill = gauge("liteinfer_kv_cells_used", max)
    cells = _get(last, "liteinfer_kv_cells_total", None)
    n_steps = delta("liteinfer_sequences_per_step_count")
    prompt = delta("liteinfer_prompt_tokens_total")
    ttft = _quantile(first, last, "liteinfer_time_to_first_token_seconds", 0.95)
    step = _quantile(first, last, "liteinfer_step_seconds", 0.95)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "live.window_s": round(elapsed, 1),
        "live.requests": int(requests),
        "live.rejected_queue_full": int(rejected),
        "live.queue_full_fraction": round(max(at_limit, refused), 3),
        "live.queue_depth_max": int(max(depths)),
        "live.ttft_p95_ms": ms(ttft),
        "live.target_ttft_ms": ms(_get(last, "liteinfer_target_ttft_seconds", None)),
        "live.step_p95_ms": ms(step),
        "live.target_itl_ms": ms(_get(last, "liteinfer_target_itl_seconds", None)),
        "live.preemptions": int(delta("liteinfer_kv_preemptions_total")),
        "live.kv_fill": round(kv_fill / cells, 3) if kv_fill is not None and cells else None,
        "live.outside_cpu_load": _round(gauge("liteinfer_outside_cpu_load", lambda v: sum(v) / len(v))),
        "live.cgroup_throttled_s": (round(delta("liteinfer_cgroup_throttled_seconds_total"), 3)
                                    if "liteinfer_cgroup_throttled_seconds_total" in last else None),
        "live.cpu_steal": _round(gauge("liteinfer_cpu_steal_fraction", lambda v: sum(v) / len(v))),
        "live.cpu_freq_ratio": _round(gauge("liteinfer_cpu_frequency_ratio", min)),
        "live.temperature_c": _round(gauge("liteinfer_cpu_temperature_celsius", max)),
        "live.free_memory_fraction": _round(gauge("liteinfer_free_memory_fraction", min)),
        "live.threads": int(last["liteinfer_engine_threads"]) if "liteinfer_engine_threads" in last else None,
        "live.seqs_per_step": round(delta("liteinfer_sequences_per_step_sum") / n_steps, 2) if n_steps else None,
        "live.prefix_reuse": round(delta("liteinfer_prefix_reused_tokens_total") / prompt, 3) if prompt else None,
        "live.tok_s": round(delta("liteinfer_generated_tokens_total") / elapsed, 1),
        "live.oneshot_queue_max": int(max(_sum(s, "liteinfer_oneshot_queue_depth") for s in samples)),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
