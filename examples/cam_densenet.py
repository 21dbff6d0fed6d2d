"""Story 2 — CAM on a fine-tuned DenseNet-121 with a 2-class classifier.

Users replace DenseNet-121's classifier by ``Linear(1024, 2)``, fine-tune under DataParallel
(every checkpoint key then starts with ``module.``), and draw CAM: the last conv features times
the class's classifier weights, min-max scaled, resized to the input, coloured with OpenCV's
JET map and blended as ``0.3 · heatmap + 0.5 · image``. Pre-processing: random-resized crop 224
and ImageNet mean/std.

    python examples/cam_densenet.py --weights finetuned.pth --image cat.jpg --out out/
    python examples/cam_densenet.py --framework paddle             # offline: random weights

xplain finds the classifier and the pooled feature map itself (and the functional ReLU that
torchvision's DenseNet applies between them), so no hook code is needed.
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

CLASSIFIER = {"torch": "classifier.weight", "paddle": "out.weight"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="CAM on a 2-class DenseNet-121")
    _common.add_common_args(p)
    p.add_argument("--image", default=None, help="image file (default: a synthetic one)")
    p.add_argument("--weights", default=None, help="fine-tuned checkpoint (DataParallel keys ok)")
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--size", type=int, default=224, help="crop size")
    p.add_argument("--target", type=int, default=None, help="class (default: predicted)")
    args = p.parse_args(argv)
    out = Path(args.out)

    model = _common.zoo(args.arch, args.framework, seed=args.seed, num_classes=2)
    classifier_weight = None
    if args.weights:
        state = _common.load_checkpoint(args.weights, args.framework)   # "module." stripped
        _common.load_into(model, state, args.framework)
        classifier_weight = state[CLASSIFIER[args.framework]]
        if args.framework == "paddle":
            classifier_weight = classifier_weight.T       # paddle Linear stores (in, out)
        print(f"loaded {len(state)} tensors from {args.weights}; classifier weight "
              f"{tuple(classifier_weight.shape)}")

    image_path = args.image or _common.sample_image(out / "densenet_input.png", 320, args.seed)
    crop = io.random_resized_crop(np.random.default_rng(args.seed), io.load_image(image_path),
                                  size=args.size)
    x = _common.to_tensor(io.normalize(crop)[None], args.framework)

    exp = xplain.explain(model, x, method="cam", target=args.target)   # (1, size, size) in [0, 1]
    cam = exp.numpy()[0]
    heat = viz.colorize(cam, "jet")
    blended = viz.overlay(crop, heat, alpha=0.3, beta=0.5)
    path = viz.save(out / "cam_densenet.png", blended)
    probs = _common.logits(model, x)[0]
    probs = np.exp(probs - probs.max()) / np.exp(probs - probs.max()).sum()
    print(f"class {int(exp.targets[0])} (p={probs[exp.targets[0]]:.3f}); CAM head: "
          f"{exp.extras.get('head')}; wrote {path}")
    return {"cam": cam, "crop": crop, "heat": heat, "blended": blended, "file": str(path),
            "explanation": exp, "classifier_weight": classifier_weight, "inputs": x, "model": model}


if __name__ == "__main__":
    main()
