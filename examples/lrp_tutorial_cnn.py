"""Story 1 — LRP on the classic small hand-written CNN (the Captum LRP tutorial, with xplain).

Model: Conv2d(3→6, 3×3) → ReLU → Conv2d(6→16, 3×3) → ReLU → view(-1, 16·28·28) →
Linear(12544→512) → ReLU → Linear(512→64) → ReLU → Linear(64→10), on 32×32 RGB images read with
OpenCV (xplain.io converts OpenCV's BGR to RGB) and stacked into a batch of 2. Relevance for
class 5, split per image, shown as a heat map in a white-to-black colormap, positive sign only,
1 % outliers clipped, with a colorbar.

    python examples/lrp_tutorial_cnn.py --framework torch  --out out/     # or paddle
    python examples/lrp_tutorial_cnn.py --images a.png b.png --weights net.pth

Without ``--weights`` the model has deterministic random weights (xplain's offline zoo), without
``--images`` two synthetic pictures are written and read back.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import xplain  # noqa: E402
from xplain import io, viz  # noqa: E402

MEAN = STD = (0.5, 0.5, 0.5)  # the tutorial's Normalize((0.5,)*3, (0.5,)*3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="LRP on the tutorial CNN")
    _common.add_common_args(p)
    p.add_argument("--images", nargs="*", default=None, help="image files (default: 2 synthetic)")
    p.add_argument("--weights", default=None, help="state dict (.pth / .pdparams); DataParallel ok")
    p.add_argument("--target", type=int, default=5)
    p.add_argument("--composite", default=None, help="LRP composite (default: xplain's)")
    args = p.parse_args(argv)
    out = Path(args.out)

    model = _common.zoo("tutorial_cnn", args.framework, seed=args.seed)
    if args.weights:
        _common.load_into(model, _common.load_checkpoint(args.weights, args.framework), args.framework)
    paths = args.images or [_common.sample_image(out / f"input_{i}.png", 32, seed=args.seed + i)
                            for i in range(2)]
    pics = [cv2.resize(io.load_image(path), (32, 32), interpolation=cv2.INTER_AREA) for path in paths]
    x = _common.to_tensor(np.stack([io.normalize(im, MEAN, STD) for im in pics]), args.framework)

    options = {} if args.composite is None else {"composite": args.composite}
    exp = xplain.explain(model, x, method="lrp", target=args.target, **options)
    relevance = exp.numpy()                      # (2, 3, 32, 32), same numbers as exp.attributions
    maps = viz.heatmap(relevance, sign="positive", clip_percentile=1.0)   # (2, 32, 32) in [0, 1]
    files = []
    for i, pic in enumerate(pics):
        fig = viz.figure([viz.Panel(pic, "image"),
                          viz.Panel(maps[i], f"LRP, class {args.target}", cmap="gray_r",
                                    colorbar=True, vmin=0.0, vmax=1.0)], cell=192)
        files.append(str(viz.save(out / f"lrp_tutorial_{i}.png", fig)))
        print(f"image {i}: relevance sum {relevance[i].sum():+.4f}, target logit "
              f"{float(np.asarray(exp.extras.get('target_output', [np.nan] * 2))[i]):+.4f} -> {files[-1]}")
    return {"relevance": relevance, "maps": maps, "files": files, "explanation": exp,
            "inputs": x, "model": model}


if __name__ == "__main__":
    main()
