"""Train the bundled demo CNN (``xplain/data/demo_cnn.npz``) on synthetic shapes.

    PYTHONPATH=.:backends python examples/train_demo_model.py --out xplain/data/demo_cnn.npz

Data come from :func:`xplain.demo.draw_shapes` (circles, squares, triangles, crosses drawn with
OpenCV on noise), so anyone can regenerate the weights without a download. Trained with PyTorch;
the weights are saved framework-neutrally (numpy ``.npz``, torch-style keys, Linear ``(out, in)``)
and load into the same architecture in paddle (see :func:`xplain.demo.build_model`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="xplain/data/demo_cnn.npz")
    p.add_argument("--train", type=int, default=16000, help="training images")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", type=int, default=2000, help="fresh images for the final accuracy")
    args = p.parse_args(argv)

    import torch

    from xplain import demo

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    images, labels = demo.draw_shapes(rng, args.train)
    x = torch.as_tensor(demo.to_input(images))
    y = torch.as_tensor(labels)
    print(f"generated {args.train} training images in {time.perf_counter() - t0:.1f} s")
    model = demo.build_model("torch", weights={})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * (args.train // 64 + 1))
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(args.train)
        total = 0.0
        for s in range(0, args.train, 64):
            idx = perm[s:s + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        acc = demo.accuracy(model, "torch", n=min(1000, args.eval), seed=10_000 + epoch)
        print(f"epoch {epoch + 1}: loss {total / args.train:.4f}, fresh-image accuracy {acc:.3f} "
              f"({time.perf_counter() - t0:.0f} s)")
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **weights)
    final = demo.accuracy(model, "torch", n=args.eval, seed=1234)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} kB); accuracy on {args.eval} fresh images: {final:.3f}")
    return {"accuracy": final, "path": str(out)}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
