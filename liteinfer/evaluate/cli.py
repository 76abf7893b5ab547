"""`liteinfer eval <metric> ...`: accuracy evaluation commands.

Each metric is one `add_*` function that adds a subparser to `eval`'s own subparsers;
a new evaluation (e.g. ONNX cosine / accuracy) is one more function in EVALS.
"""

from __future__ import annotations

import argparse
import json
import sys

from liteinfer.evaluate.cli_onnx import add_classify, add_embed, add_retrieval


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="GGUF path or catalog name")
    p.add_argument("--text", required=True, help="UTF-8 text file to score (held-out text)")
    p.add_argument("--ctx", type=int, default=256, help="window length; the second half of each is scored")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most the first N tokens of the text")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_ppl(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("ppl", help="perplexity of a GGUF LLM on a text")
    _common(p)
    p.set_defaults(func=_ppl_main)


def add_kld(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("kld", help="KL divergence and top-1 agreement of a GGUF LLM against a reference model")
    _common(p)
    p.add_argument("--ref", required=True, help="reference GGUF (e.g. the FP32 model)")
    p.set_defaults(func=_kld_main)


def add_acc(ev: argparse._SubParsersAction) -> None:
    p = ev.add_parser("acc", help="next-token top-1 accuracy of a GGUF LLM on a text (vs --ref: the ratio)")
    _common(p)
    p.add_argument("--ref", default=None, help="reference GGUF (e.g. the FP32 model): accuracy ratio, KLD, top-1")
    p.set_defaults(func=_acc_main)


def _acc_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.evaluate.llm import Reference, accuracy, read_text

    text, show = read_text(args.text), sys.stderr.isatty()
    if args.ref is None:
        r = accuracy(args.model, text, args.ctx, args.max_tokens, progress=show)
    else:
        r = Reference(args.ref, text, args.ctx, args.max_tokens, progress=show).compare(args.model, progress=show)
    if args.json:
        print(json.dumps(r))
    elif args.ref is None:
        print(f"next-token top-1 accuracy {r['accuracy']:.2%} over {r['tokens']} tokens in {r['windows']} windows "
              f"of {args.ctx}")
    else:
        print(f"next-token top-1 accuracy {r['accuracy']:.2%} vs {r['ref_accuracy']:.2%} for the reference "
              f"(ratio {r['accuracy_ratio']:.4f}); agreement {r['top1']:.2%}, KLD {r['kld']:.5f}, "
              f"ppl ratio {r['ppl_ratio']:.4f}  {r['tokens']} tokens")
    return 0


def _ppl_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.evaluate.llm import perplexity, read_text

    r = perplexity(args.model, read_text(args.text), args.ctx, args.max_tokens, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(r.as_dict()))
    else:
        print(f"perplexity {r.ppl:.4f} (nll {r.nll:.4f}) over {r.tokens} tokens in {r.windows} windows of {args.ctx}")
    return 0


def _kld_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.evaluate.llm import kl_divergence, read_text

    r = kl_divergence(args.model, args.ref, read_text(args.text), args.ctx, args.max_tokens,
                      progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(r))
    else:
        print(f"KLD {r['kld']:.5f} (p99 {r['kld_p99']:.4f}, max {r['kld_max']:.3f})  top-1 {r['top1']:.2%}  "
              f"accuracy ratio {r['accuracy_ratio']:.4f}  "
              f"ppl {r['ppl']:.4f} vs ref {r['ppl_ref']:.4f} (ratio {r['ppl_ratio']:.4f})  {r['tokens']} tokens")
    return 0


EVALS = [add_ppl, add_kld, add_acc, add_classify, add_embed, add_retrieval]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate model accuracy (perplexity, KLD, top-1, ...)")
    ev = p.add_subparsers(dest="metric", metavar="METRIC")
    for add in EVALS:
        add(ev)
    p.set_defaults(func=lambda a: p.print_help() or 2)
