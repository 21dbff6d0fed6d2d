"""Story 4 — Occlusion on a ResNet-18 for two classes of one image (the Captum tutorial).

One 224² image (resize 256, centre crop 224, ImageNet normalisation) showing a dog and a cat;
attributions for class 208 (Labrador retriever) and 283 (Persian cat) with sliding windows
(3, 45, 45), strides (3, 9, 9) and baseline 0, shown side by side as
"heat map (all signs) | original image" with colour bars. ``--methods`` adds the methods the
tutorial points on to (Integrated Gradients, Guided Backprop, Guided Grad-CAM, ...).

    python examples/occlusion_resnet18.py --image dog_cat.jpg --out out/
    python examples/occlusion_resnet18.py --pretrained                    # the zoo's weights, online
    python examples/occlusion_resnet18.py --framework paddle              # offline: random weights
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

LABELS = {208: "Labrador retriever", 283: "Persian cat"}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def build_model(args: argparse.Namespace):
    if args.pretrained:  # the framework's own ImageNet weights (downloaded; offline it says so)
        from xplain.modelkit import kit

        model = kit(args.framework).build_zoo("resnet18", pretrained=True)
    else:
        model = _common.zoo("resnet18", args.framework, seed=args.seed)
    if args.weights:
        _common.load_into(model, _common.load_checkpoint(args.weights, args.framework), args.framework)
    return model


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Occlusion on ResNet-18")
    _common.add_common_args(p)
    p.add_argument("--image", default=None)
    p.add_argument("--weights", default=None, help="state dict file")
    p.add_argument("--pretrained", action="store_true",
                   help="the zoo's ImageNet weights (torchvision or paddle.vision; downloads)")
    p.add_argument("--targets", type=_ints, default=(208, 283))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--window", type=_ints, default=(3, 45, 45))
    p.add_argument("--stride", type=_ints, default=(3, 9, 9))
    p.add_argument("--methods", default="", help="more methods, e.g. integrated_gradients,"
                   "guided_backprop,guided_gradcam")
    args = p.parse_args(argv)
    out = Path(args.out)

    model = build_model(args)
    image = args.image or _common.sample_image(out / "occlusion_input.png", 320, args.seed)
    x1 = io.preprocess(io.load_image(image), round(args.size * 256 / 224), args.size)
    targets = list(args.targets)
    # one batch: the same image once per target class
    x = _common.to_tensor(np.repeat(x1[None], len(targets), axis=0), args.framework)
    picture = viz.to_image(x1, io.IMAGENET_MEAN, io.IMAGENET_STD)

    results, files = {}, []
    methods = ["occlusion"] + [m for m in args.methods.split(",") if m]
    for method in methods:
        opts = ({"sliding_window_shapes": args.window, "strides": args.stride, "baselines": 0.0}
                if method == "occlusion" else {})
        exp = xplain.explain(model, x, method=method, target=targets, **opts)
        attr = exp.numpy()
        results[method] = attr
        maps = viz.heatmap(exp, sign="all", clip_percentile=1.0)  # (N, H, W): layout from exp
        for i, t in enumerate(targets):
            fig = viz.figure([viz.Panel(maps[i], f"{method}: {LABELS.get(t, t)}", cmap="bwr",
                                        colorbar=True, vmin=-1, vmax=1),
                              viz.Panel(picture, "original image")], cell=224)
            files.append(str(viz.save(out / f"{method}_{t}.png", fig)))
        print(f"{method}: attribution sums {np.round(attr.reshape(len(targets), -1).sum(1), 4)} "
              f"for classes {targets}" + (f" ({exp.windows} windows)" if method == "occlusion" else ""))
    print(f"wrote {len(files)} figures to {out}")
    return {"attributions": results, "files": files, "inputs": x, "model": model,
            "targets": targets}


if __name__ == "__main__":
    main()
