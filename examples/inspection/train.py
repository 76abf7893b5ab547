"""Train the fashion-MNIST inspection CNN, export it to FP32 ONNX, and write the test split.

    python examples/inspection/train.py --out-dir ~/.cache/liteinfer/inspection [--epochs 3] [--limit N]

Writes OUT_DIR/fashion_cnn.pth (state_dict), OUT_DIR/fashion_cnn.onnx (with liteinfer metadata:
labels and preprocessing) and OUT_DIR/fashion_test.npz / fashion_calib.npz (labelled images for
`liteinfer eval classify` and `liteinfer quantize --calib`). Needs the torch extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import LABELS, MEAN, STD, load_split, save_npz  # noqa: E402
from model import FashionCNN  # noqa: E402

from liteinfer.convert.torch_export import export_module  # noqa: E402
from liteinfer.engines.onnx_meta import ImagePrep  # noqa: E402


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def train(epochs: int, limit: int | None, seed: int = 0) -> FashionCNN:
    torch.manual_seed(seed)
    images, labels = load_split("train", limit=limit)
    x, y = to_tensor(images), torch.from_numpy(labels)
    model = FashionCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        t0, total = time.time(), 0.0
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.time() - t0:.0f} s)", flush=True)
    return model.eval()


def accuracy(model: FashionCNN, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(to_tensor(images)).argmax(1).numpy()
    return float((pred == labels).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path.home() / ".cache" / "liteinfer" / "inspection")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick runs)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    model = train(args.epochs, args.limit)
    test_x, test_y = load_split("test")
    print(f"torch test accuracy: {accuracy(model, test_x, test_y):.4f}")
    torch.save(model.state_dict(), args.out_dir / "fashion_cnn.pth")
    prep = ImagePrep(size=28, resize=28, mode="L", mean=[MEAN], std=[STD])
    onnx_path = export_module(model, args.out_dir / "fashion_cnn.onnx", prep, LABELS, name="fashion-cnn",
                              source="examples/inspection/train.py")
    save_npz(args.out_dir / "fashion_test.npz", test_x, test_y)
    train_x, train_y = load_split("train")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train_x), 512, replace=False)  # calibration: training images, never test
    save_npz(args.out_dir / "fashion_calib.npz", train_x[pick], train_y[pick])
    print(f"wrote {onnx_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
