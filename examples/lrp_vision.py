"""Story 3 — LRP on paddle.vision (or torchvision) ResNet-50 and VGG-16, several rules.

InterpretDL users need rewritten model definitions and a pinned old Paddle for this. With xplain
the stock ``paddle.vision.models.resnet50()`` / ``vgg16()`` (or torchvision's) are explained as
they are: LRP-0 (``zero``), LRP-ε (``epsilon``) and the usual composites, one heat map per image
and rule, plus each image's relevance sum next to its logit (conservation check).

    python examples/lrp_vision.py --framework paddle --arch resnet50 --out out/
    python examples/lrp_vision.py --framework paddle --arch vgg16 --weights vgg16.pdparams

Offline by default: deterministic random weights. ``--weights`` loads a checkpoint (for paddle,
``paddle.vision.models.resnet50(pretrained=True)`` downloads ImageNet weights when online).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import xplain  # noqa: E402
from xplain import io, viz  # noqa: E402

DEFAULT_RULES = "zero,epsilon,epsilon_plus_flat,epsilon_gamma_box"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="LRP composites on ResNet/VGG")
    _common.add_common_args(p)
    p.add_argument("--arch", default="resnet50", help="resnet18/34/50, vgg11/16/16_bn/19")
    p.add_argument("--weights", default=None)
    p.add_argument("--images", nargs="*", default=None)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--composites", default=DEFAULT_RULES, help="comma-separated composite names")
    p.add_argument("--epsilon", type=float, default=1e-6)
    args = p.parse_args(argv)
    out = Path(args.out)

    model = _common.zoo(args.arch, args.framework, seed=args.seed)
    if args.weights:
        _common.load_into(model, _common.load_checkpoint(args.weights, args.framework), args.framework)
    paths = args.images or [_common.sample_image(out / f"vision_input_{i}.png", args.size, args.seed + i)
                            for i in range(2)]
    resize = round(args.size * 256 / 224)
    x = _common.to_tensor(np.stack([io.preprocess(io.load_image(q), resize, args.size) for q in paths]),
                          args.framework)
    pictures = [viz.to_image(x[i:i + 1], io.IMAGENET_MEAN, io.IMAGENET_STD) for i in range(len(paths))]
    box = {"low": float(((0 - np.array(io.IMAGENET_MEAN)) / io.IMAGENET_STD).min()),
           "high": float(((1 - np.array(io.IMAGENET_MEAN)) / io.IMAGENET_STD).max())}

    relevance, sums, panels = {}, {}, []
    for i, pic in enumerate(pictures):
        panels.append(viz.Panel(pic, f"image {i}"))
    for name in args.composites.split(","):
        extra = box if name == "epsilon_gamma_box" else {}
        exp = xplain.explain(model, x, method="lrp", composite=name, epsilon=args.epsilon, **extra)
        relevance[name] = exp.numpy()
        sums[name] = (np.asarray(exp.relevance_sum), np.asarray(exp.target_output))
        maps = viz.heatmap(relevance[name], sign="all", clip_percentile=1.0)
        for i in range(len(paths)):
            panels.append(viz.Panel(maps[i], name, cmap="bwr", colorbar=True, vmin=-1, vmax=1))
        print(f"{name:26s} relevance sums {np.round(sums[name][0], 4)} vs logits "
              f"{np.round(sums[name][1], 4)} (class {exp.targets})")
    # one column per image: images on the first row, one row per composite
    n = len(paths)
    order = [panels[r * n + c] for r in range(len(panels) // n) for c in range(n)]
    fig = viz.figure(order, cols=n, cell=min(224, args.size * 2),
                     title=f"LRP on {args.framework} {args.arch}")
    path = viz.save(out / f"lrp_{args.framework}_{args.arch}.png", fig)
    print(f"wrote {path}")
    return {"relevance": relevance, "sums": sums, "file": str(path), "inputs": x, "model": model}


if __name__ == "__main__":
    main()
