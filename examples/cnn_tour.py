"""Story 5 — a tour of CNN visualisation: summary, class prototypes, saliency, CAM, Grad-CAM.

* A torchsummaryX-style table of ResNet-18 at 224²: kernel and output shape, parameters and
  multiply-adds per layer; totals 11.7 M parameters, 1.8 G mult-adds.
* Class prototypes of an MNIST-style MLP (784→512→100→10): ten inputs optimised with Adam
  (lr 0.01) to maximise each digit's class, with an L2 pull (λ = 0.1) toward that digit's mean
  image; a 5×2 grid with colour bars.
* Saliency: squared input gradients of a small MNIST CNN, one example per digit, overlaid in the
  "hot" colour map at alpha 0.5 on the grey digit.
* CAM on ResNet-18 / SqueezeNet / DenseNet keeping the top-20 classifier weights of the
  predicted class, blended with JET.
* Grad-CAM on VGG-19 at layer ``features.35``, for the top class or a chosen one.

No MNIST download here: digits are rendered with OpenCV (``cv2.putText``, jittered), and models
have deterministic random weights unless ``--mlp-weights`` / ``--cnn-weights`` are given.

    python examples/cnn_tour.py --framework torch --out out/
    python examples/cnn_tour.py --parts summary,prototypes --size 224
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

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
PARTS = ("summary", "prototypes", "saliency", "cam", "gradcam")


def render_digits(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """``(n, 28, 28)`` float images in [0, 1]: each digit drawn with OpenCV, randomly shifted."""
    out = np.zeros((len(digits), 28, 28), np.float32)
    for i, d in enumerate(digits):
        img = np.zeros((28, 28), np.uint8)
        dx, dy = rng.integers(-2, 3, 2)
        cv2.putText(img, str(int(d)), (7 + int(dx), 22 + int(dy)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 + 0.1 * rng.random(), 255, 2, cv2.LINE_AA)
        out[i] = img / 255.0
    return out


def mnist_normalize(a: np.ndarray) -> np.ndarray:
    return ((a - MNIST_MEAN) / MNIST_STD)[:, None].astype(np.float32)


def part_summary(args: argparse.Namespace) -> dict:
    model = _common.zoo("resnet18", args.framework, seed=args.seed)
    s = xplain.summary(model, (1, 3, args.size, args.size))
    print(s)
    return {"total_params": s.total_params, "total_mult_adds": s.total_mult_adds, "rows": len(s.rows)}


def part_prototypes(args: argparse.Namespace, out: Path) -> dict:
    model = _common.zoo("mlp", args.framework, seed=args.seed)
    if args.mlp_weights:
        _common.load_into(model, _common.load_checkpoint(args.mlp_weights, args.framework), args.framework)
    rng = np.random.default_rng(args.seed)
    # the mean "training" image of each digit (MNIST's would come from the data set)
    means = np.stack([render_digits(rng, np.full(64, d)).mean(0) for d in range(10)])
    means = mnist_normalize(means)
    x = _common.to_tensor(means, args.framework)
    exp = xplain.explain(model, x, method="prototype", target=list(range(10)), steps=args.steps,
                         lr=0.01, l2=0.1, mean_images=means)
    protos = exp.numpy()[:, 0]
    probs = np.asarray(xplain.backend_for(model).to_numpy(exp.probabilities))
    start = _common.logits(model, x)
    start = np.exp(start - start.max(1, keepdims=True))
    start = (start / start.sum(1, keepdims=True))[np.arange(10), np.arange(10)]
    print(f"mean images:  class probabilities {np.round(start, 3)}")
    fig = viz.figure([viz.Panel(protos[d], f"{d}: p={probs[d]:.2f}", cmap="gray", colorbar=True)
                      for d in range(10)], cols=5, cell=112, title="class prototypes")
    path = viz.save(out / "prototypes.png", fig)
    print(f"prototypes: class probabilities {np.round(probs, 3)} -> {path}")
    return {"probabilities": probs, "start_probabilities": start, "prototypes": protos,
            "file": str(path)}


def part_saliency(args: argparse.Namespace, out: Path) -> dict:
    model = _common.zoo("small_cnn", args.framework, seed=args.seed)
    if args.cnn_weights:
        _common.load_into(model, _common.load_checkpoint(args.cnn_weights, args.framework), args.framework)
    digits = render_digits(np.random.default_rng(args.seed + 1), np.arange(10))
    x = _common.to_tensor(mnist_normalize(digits), args.framework)
    exp = xplain.explain(model, x, method="saliency", mode="square", target=list(range(10)))
    sal = exp.numpy()[:, 0]
    panels = [viz.Panel(viz.overlay(digits[d], viz.colorize(viz.normalize(sal[d]), "hot"),
                                    alpha=0.5, beta=0.5), f"digit {d}") for d in range(10)]
    path = viz.save(out / "saliency_digits.png", viz.figure(panels, cols=5, cell=112))
    print(f"saliency: squared gradients, sums {np.round(sal.reshape(10, -1).sum(1), 4)} -> {path}")
    return {"saliency": sal, "file": str(path)}


def _photo(args: argparse.Namespace, out: Path) -> tuple[np.ndarray, np.ndarray]:
    path = args.image or _common.sample_image(out / "tour_input.png", 320, args.seed)
    x = io.preprocess(io.load_image(path), round(args.size * 256 / 224), args.size)
    return x, viz.to_image(x, io.IMAGENET_MEAN, io.IMAGENET_STD)


def part_cam(args: argparse.Namespace, out: Path) -> dict:
    x1, picture = _photo(args, out)
    maps, panels = {}, [viz.Panel(picture, "image")]
    for arch in args.cam_archs.split(","):
        model = _common.zoo(arch, args.framework, seed=args.seed)
        x = _common.to_tensor(x1[None], args.framework)
        try:
            exp = xplain.explain(model, x, method="cam", top_k=20)
            label = "CAM-20"
        except xplain.XplainError as err:  # e.g. a conv classifier: no linear head for CAM
            print(f"{arch}: CAM not applicable ({err}); using Grad-CAM")
            exp = xplain.explain(model, x, method="gradcam")
            label = "Grad-CAM"
        maps[arch] = exp.numpy()[0]
        panels.append(viz.Panel(viz.overlay(picture, viz.colorize(maps[arch], "jet"), 0.3, 0.5),
                                f"{arch} {label}: {int(exp.targets[0])}"))
    path = viz.save(out / "cam_tour.png", viz.figure(panels, cell=192))
    print(f"CAM: {', '.join(maps)} -> {path}")
    return {"maps": maps, "file": str(path)}


def part_gradcam(args: argparse.Namespace, out: Path) -> dict:
    x1, picture = _photo(args, out)
    model = _common.zoo(args.gradcam_arch, args.framework, seed=args.seed)
    x = _common.to_tensor(x1[None], args.framework)
    exp = xplain.explain(model, x, method="gradcam", layer=args.gradcam_layer, target=args.gradcam_class)
    m = exp.numpy()[0]
    path = viz.save(out / f"gradcam_{args.gradcam_arch}.png", viz.figure(
        [viz.Panel(picture, "image"),
         viz.Panel(viz.overlay(picture, viz.colorize(m, "jet"), 0.3, 0.5),
                   f"Grad-CAM {args.gradcam_layer}, class {int(exp.targets[0])}")], cell=192))
    print(f"Grad-CAM on {args.gradcam_arch} {args.gradcam_layer}, class {int(exp.targets[0])} -> {path}")
    return {"map": m, "target": int(exp.targets[0]), "file": str(path)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="A tour of CNN visualisation")
    _common.add_common_args(p)
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {PARTS}")
    p.add_argument("--size", type=int, default=224, help="image size for summary/CAM/Grad-CAM")
    p.add_argument("--image", default=None)
    p.add_argument("--steps", type=int, default=2000, help="Adam steps for the prototypes")
    p.add_argument("--mlp-weights", default=None)
    p.add_argument("--cnn-weights", default=None)
    p.add_argument("--cam-archs", default="resnet18,squeezenet1_0,densenet121")
    p.add_argument("--gradcam-class", type=int, default=None, help="default: the top class")
    p.add_argument("--gradcam-arch", default="vgg19")
    p.add_argument("--gradcam-layer", default="features.35", help="VGG-19's last conv ReLU")
    args = p.parse_args(argv)
    out = Path(args.out)
    parts = [q for q in args.parts.split(",") if q]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    results = {}
    for part in parts:
        fn = globals()[f"part_{part}"]
        results[part] = fn(args) if part == "summary" else fn(args, out)
    return results


if __name__ == "__main__":
    main()
