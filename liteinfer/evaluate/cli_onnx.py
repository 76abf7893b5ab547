"""`liteinfer eval classify|embed|retrieval ...`: ONNX model accuracy (evaluate/cli.py lists these)."""

from __future__ import annotations

import argparse
import json


def add_classify(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("classify", help="ONNX image classifier: accuracy on labelled data, top-1 agreement with --ref")
    p.add_argument("-m", "--model", required=True, help="classifier .onnx")
    p.add_argument("--data", required=True, help=".npz (images, labels) or a folder of images")
    p.add_argument("--ref", default=None, help="reference .onnx (e.g. FP32) for agreement and accuracy ratio")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)


def add_embed(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("embed", help="ONNX embedding model: cosine and retrieval agreement with --ref")
    p.add_argument("-m", "--model", required=True, help="embedding .onnx")
    p.add_argument("--text", dest="data", required=True, help="text file: one input per line or %%-separated")
    p.add_argument("--ref", required=True, help="reference .onnx (the FP32 model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N texts only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)


def add_retrieval(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("retrieval", help="ONNX embedding model: retrieval top-1 on queries vs passages made from a "
                                        "text, and cosine to --ref")
    p.add_argument("-m", "--model", required=True, help="embedding .onnx")
    p.add_argument("--text", dest="data", required=True,
                   help="text file: one record per line or %%-separated (each record: query = first third)")
    p.add_argument("--ref", default=None, help="reference .onnx (the FP32 model): ratio and cosine")
    p.add_argument("--limit", type=int, default=300, help="number of passages (default 300)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_retrieval_main)


def _retrieval_main(args: argparse.Namespace) -> int:
    # on use: pulls in numpy and onnxruntime (start-up, memory)
    from liteinfer.evaluate.retrieval import evaluate_retrieval

    r = evaluate_retrieval(args.model, args.data, args.ref, limit=args.limit)
    if args.json:
        print(json.dumps(r))
    elif args.ref is None:
        print(f"retrieval top-1 {r['retrieval_top1']:.2%} over {r['passages']} passages")
    else:
        print(f"size 1/{1 / r['size_ratio']:.2f} of the reference; retrieval top-1 {r['retrieval_top1']:.2%} vs "
              f"{r['ref_retrieval_top1']:.2%} (ratio {r['retrieval_ratio']:.4f}) over {r['passages']} passages; "
              f"mean cosine {r['mean_cosine']:.4f} (p05 {r['p05_cosine']:.4f}, min {r['min_cosine']:.4f})")
    return 0


def _main(args: argparse.Namespace) -> int:
    # on use: pulls in numpy (start-up, memory)
    from liteinfer.evaluate.onnx import evaluate

    r = evaluate(args.model, args.data, args.ref, limit=args.limit)
    if args.json:
        print(json.dumps(r))
        return 0
    size = f"size {r['size_bytes'] / 1e6:.2f} MB"
    if "size_ratio" in r:
        size += f" (1/{1 / r['size_ratio']:.2f} of the reference)"
    if r["kind"] == "embedding":
        print(f"{size}; mean cosine {r['mean_cosine']:.4f} (p05 {r['p05_cosine']:.4f}, min {r['min_cosine']:.4f}); "
              f"retrieval agreement {r['retrieval_agreement']:.2%} over {r['n']} texts")
    elif "top1_agreement" in r:
        acc = (f"; accuracy {r['accuracy']:.2%} vs {r['ref_accuracy']:.2%} (ratio {r['accuracy_ratio']:.4f})"
               if "accuracy" in r else "")
        print(f"{size}; top-1 agreement {r['top1_agreement']:.2%} ({r['top1_agreement_confident']:.2%} on the "
              f"{r['n_confident']} inputs the reference gives p >= 0.5), mean KLD {r['mean_kld']:.4f}{acc} "
              f"over {r['n']} images")
    else:
        print(f"{size}; accuracy {r['accuracy']:.2%} over {r['n']} images")
    return 0
