"""Send inspection images to the server, as a camera station would: accuracy, throughput, latency.

    python examples/inspection/classify.py --url http://127.0.0.1:8000 --data OUT/fashion_test.npz \
        [--limit 500] [--concurrency 8] [--save-png DIR]

Each request is one PNG upload (multipart, field `file`) to POST /v1/classify; `--concurrency`
stations send at once, so the server batches them. Prints accuracy against the labels, images/s,
p50/p95 latency and the server's mean batch size. `--save-png DIR` also writes the first 8 images
as PNG files (named INDEX_LABEL.png) for `liteinfer classify`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def to_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--data", type=Path, required=True, help=".npz with images [N, H, W] uint8 and labels [N]")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--save-png", type=Path, default=None, help="write the first 8 images here as PNG")
    args = ap.parse_args(argv)

    with np.load(args.data) as d:
        images, labels = d["images"][: args.limit], d["labels"][: args.limit]
    if args.save_png:
        args.save_png.mkdir(parents=True, exist_ok=True)
        for i in range(min(8, len(images))):
            Image.fromarray(images[i]).save(args.save_png / f"{i}_{int(labels[i])}.png")
    pngs = [to_png(im) for im in images]
    client = httpx.Client(base_url=args.url, timeout=60)

    def one(i: int) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post("/v1/classify", files={"file": (f"{i}.png", pngs[i], "image/png")}, data={"top_k": "1"})
        r.raise_for_status()
        return r.json()["data"][0]["labels"][0]["class_id"], time.perf_counter() - t

    before = client.get("/v1/oneshot/stats").json().get("classifier", {})
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(len(pngs))))
    wall = time.perf_counter() - t0
    after = client.get("/v1/oneshot/stats").json().get("classifier", {})
    pred = np.array([p for p, _ in results])
    lat = np.sort([x for _, x in results]) * 1000
    batches = after.get("batches", 0) - before.get("batches", 0)
    print(f"{after.get('model', '?')}: {len(pngs)} images, accuracy {float((pred == labels).mean()):.4f}")
    print(f"{len(pngs) / wall:.1f} images/s at concurrency {args.concurrency}; latency p50 {lat[len(lat) // 2]:.1f} ms, "
          f"p95 {lat[int(0.95 * (len(lat) - 1))]:.1f} ms; mean batch {len(pngs) / max(1, batches):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
