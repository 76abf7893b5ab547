"""Train a small llama-architecture LM in FP32 on Debian `fortunes`, save it as a Hugging Face
safetensors folder, and convert it to GGUF with `liteinfer convert hf`.

This is the FP32 reference for every LLM accuracy number in liteinfer: no full-precision LLM
ships in any package here, and a shipped Q4 model is no honest reference.

    .venv/bin/python examples/tiny_lm/train.py                       # 10.2M params, <= 18 min of training
    .venv/bin/python examples/tiny_lm/train.py --tiny --out /tmp/t   # seconds: proves the path

Default: d=512, 2 layers, 8 heads (2 KV), SwiGLU 1536, vocab 4096, untied output head (AWQ
folds scales into the output norm), batch 4 x 256 tokens, up to 2400 steps or 18 minutes of
wall clock, whichever comes first (the cosine schedule follows whichever runs out first).
Why this shape: on 2 CPU cores the cost per token is the matrix work, and a wide, shallow
model keeps the matrices large; among llama shapes of >= 10M parameters whose every row
width is a multiple of 256 (llama.cpp's k-quants need it), this one cost the least per
token of the shapes measured (0.55 CPU-s per 1k-token step vs 0.62-0.76 for 3-4 layers at d=512),
and learned about as much per CPU-second as the old 6.8M default (d=256, 6 layers): held-out
loss 5.35 vs 5.34 after 200 CPU-s each.

Output folder (default ~/.cache/liteinfer/tiny_lm/): config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, calib.txt (from the training split), heldout.txt
(never trained on, never used for calibration), train_log.json, model-f32.gguf.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from data import CHATML, EOT, load_fortunes, split, train_tokenizer
from model import Config, LlamaForCausalLM


def default_out() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer" / "tiny_lm"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=default_out())
    p.add_argument("--tiny", action="store_true", help="a seconds-long run with a toy config (tests)")
    p.add_argument("--minutes", type=float, default=18.0, help="wall-clock cap on the training loop")
    p.add_argument("--max-steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="default: 1 on a busy machine, else all cores")
    p.add_argument("--no-convert", action="store_true")
    a = p.parse_args()
    if a.tiny:  # widths stay multiples of 256 where llama.cpp's k-quants need it
        a.minutes, a.max_steps, a.batch, a.seq = 0.2, 30, 4, 64
        a.vocab, a.dim, a.layers, a.heads, a.kv_heads, a.ffn = 512, 256, 2, 4, 2, 512
    return a


def batches(ids: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        start = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq + 1] for s in start.tolist()])
        yield x[:, :-1], x[:, 1:]


@torch.no_grad()
def eval_loss(model, ids: torch.Tensor, seq: int, max_windows: int = 64) -> float:
    model.eval()
    losses = []
    for i in range(0, min(len(ids) - 1, max_windows * seq), seq):
        x = ids[i : i + seq + 1]
        if len(x) < 2:
            break
        logits = model(x[None, :-1])
        losses.append(torch.nn.functional.cross_entropy(logits[0], x[1:], reduction="sum").item() / (len(x) - 1))
    model.train()
    return sum(losses) / max(1, len(losses))


def main() -> int:
    a = parse()
    start = time.time()
    torch.manual_seed(a.seed)
    # On a busy machine two threads spend their time waiting for each other at every op's
    # barrier (OpenMP): one thread trains several times faster there.
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    torch.set_num_threads(a.threads or (1 if busy else min(4, os.cpu_count() or 1)))
    load0 = round(os.getloadavg()[0], 2)
    print(f"{torch.get_num_threads()} threads (load {os.getloadavg()[0]:.1f})", flush=True)
    docs = load_fortunes()
    train_docs, held_docs = split(docs, seed=a.seed)
    if a.tiny:
        train_docs, held_docs = train_docs[:2000], held_docs[:100]
    tok = train_tokenizer(train_docs, a.vocab)
    eot = tok.token_to_id(EOT)
    enc = lambda ds: torch.tensor([i for e in tok.encode_batch(ds) for i in [*e.ids, eot]], dtype=torch.long)  # noqa: E731
    train_ids, held_ids = enc(train_docs), enc(held_docs)
    cfg = Config(vocab_size=tok.get_vocab_size(), hidden_size=a.dim, intermediate_size=a.ffn,
                 num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                 max_position_embeddings=max(512, a.seq))
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M params, {len(train_ids)} train tokens, {len(held_ids)} held-out tokens", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed)
    budget, t0, warmup, log = a.minutes * 60, time.time(), 30, []
    stopped = "steps"
    for step, (x, y) in enumerate(batches(train_ids, a.batch, a.seq, gen)):
        frac = max(step / a.max_steps, (time.time() - t0) / budget)
        if frac >= 1.0:
            stopped = "steps" if step >= a.max_steps else "time"
            break
        # warmup, then cosine to 10% driven by whichever of steps or time runs out first
        lr = a.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
            log.append({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1)})
    train_s = time.time() - t0
    held = eval_loss(model, held_ids, a.seq)
    print(f"done: {step} steps ({stopped} ran out) in {train_s:.0f}s, held-out loss {held:.3f} "
          f"(ppl {math.exp(held):.1f})", flush=True)
    save(a, model, cfg, tok, train_docs, held_docs, {
        "steps": step, "stopped_by": stopped, "train_seconds": round(train_s, 1),
        "wall_seconds_before_convert": round(time.time() - start, 1), "heldout_loss": held,
        "heldout_ppl": math.exp(held), "params": n_params, "tokens_seen": step * a.batch * a.seq,
        "train_tokens": len(train_ids), "threads": torch.get_num_threads(), "load_at_start": load0,
        "log": log, "args": {k: str(v) for k, v in vars(a).items()}})
    if not a.no_convert:
        gguf = a.out / "model-f32.gguf"
        cmd = [sys.executable, "-m", "liteinfer", "convert", "hf", str(a.out), str(gguf)]
        subprocess.run(cmd, check=True)
        print(f"converted: {gguf}")
    return 0


def save(a, model, cfg: Config, tok, train_docs, held_docs, info: dict) -> None:
    """Write the HF folder into a temp dir, then rename it into place (never half a model)."""
    from safetensors.torch import save_file

    out: Path = a.out
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    bos = eos = tok.token_to_id(EOT)
    (tmp / "config.json").write_text(json.dumps(cfg.hf_config(bos, eos), indent=2))
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
        "add_bos_token": False, "chat_template": CHATML, "model_max_length": cfg.max_position_embeddings,
    }, indent=2))
    # calibration from the training split; held-out text is for evaluation only
    (tmp / "calib.txt").write_text("\n\n".join(train_docs[:1500]))
    (tmp / "heldout.txt").write_text("\n\n".join(held_docs))
    (tmp / "train_log.json").write_text(json.dumps({**info, "config": asdict(cfg)}, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)


if __name__ == "__main__":
    raise SystemExit(main())
