"""On a machine with a GPU: every registered method gives on CUDA what it gives on the CPU, and
how fast xplain is there against a raw forward+backward and against Captum and
pytorch-grad-cam (when installed).

    python benchmarks/gpu_check.py [--framework torch paddle] [--size 224] [--batch 8]
    python benchmarks/gpu_check.py --device cpu --size 64 --batch 2   # a dry run without a GPU

Equality: the same deterministic resnet18 weights (``xplain.testing.zoo``) and inputs on both
devices (a tiny ViT for the methods a CNN has nothing for: attention rollout), each method with small options (``CHECK_OPTIONS``), compared as
``max|gpu − cpu| / max|cpu|``. TF32 is switched off for the check (it rounds convolutions to
10-bit mantissas on Ampere and later, by design); what stays is float32 reduction order,
which the tolerance (``TOLERANCE``) covers. Prints two markdown tables; exits 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xplain  # noqa: E402
from xplain.modelkit import installed, kit  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402

#: max|gpu − cpu| / max|cpu| allowed: float32 sums over up to ~1e6 terms in another order
#: differ by ~1e-6 relative each; gradients chain ~20 layers of them. Methods that take
#: differences of near-equal scores (occlusion, RISE, Score-CAM's softmax) or iterate
#: (prototype) amplify that, hence their own bound.
TOLERANCE = 1e-3
LOOSE = {"occlusion": 1e-2, "rise": 1e-2, "scorecam": 1e-2, "prototype": 5e-2, "ablationcam": 1e-2}

#: options that keep each method to seconds (the rest use their defaults)
CHECK_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"sliding_window_shapes": (3, 32, 32), "strides": (3, 32, 32), "baselines": 0.0},
    "rise": {"masks": 64, "cells": 7},
    "integrated_gradients": {"steps": 16},
    "gradient_shap": {"samples": 8},
    "smoothgrad": {"samples": 8},
    "smoothgrad_sq": {"samples": 8},
    "vargrad": {"samples": 8},
    "prototype": {"steps": 10, "lr": 0.05},
    "scorecam": {"layer": "layer4"},
    "gradcam": {"layer": "layer4"},
    "gradcam++": {"layer": "layer4"},
    "ablationcam": {"layer": "layer4"},
}


def gpu_device(framework: str) -> str | None:
    if framework == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else None
    import paddle

    return "gpu:0" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else None


def deterministic(framework: str) -> None:
    if framework == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def synchronize(framework: str) -> None:
    if framework == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        import paddle

        if paddle.is_compiled_with_cuda():
            paddle.device.cuda.synchronize()


def equality(framework: str, device: str, size: int, batch: int) -> list[tuple[str, float, float, bool]]:
    k = kit(framework)
    x_np = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    cpu_model = build("resnet18", framework)
    dev_model = k.move(build("resnet18", framework), device)
    x_cpu, x_dev = k.to_tensor(x_np, cpu_model), k.to_tensor(x_np, dev_model)
    # methods a CNN has nothing for (attention rollout), and LRP through attention: a tiny ViT
    vit_cpu = k.build_small("tiny_vit")
    vit_dev = k.move(_copy(vit_cpu), device)
    v_np = np.random.default_rng(0).standard_normal((batch, 3, 48, 48)).astype(np.float32)
    v_cpu, v_dev = k.to_tensor(v_np, vit_cpu), k.to_tensor(v_np, vit_dev)
    cnn_methods = set(xplain.methods(cpu_model))
    rows = []
    for method in xplain.methods():
        opts = CHECK_OPTIONS.get(method, {})
        pair = ((cpu_model, x_cpu), (dev_model, x_dev)) if method in cnn_methods else \
            ((vit_cpu, v_cpu), (vit_dev, v_dev))
        try:
            a = xplain.explain(pair[0][0], pair[0][1], method=method, target=1, **opts).numpy()
            b = xplain.explain(pair[1][0], pair[1][1], method=method, target=1, **opts).numpy()
        except xplain.XplainError as e:  # a method that refuses this model says so on both
            rows.append((method, float("nan"), 0.0, False))
            print(f"  {method}: refused ({e})", file=sys.stderr)
            continue
        scale = float(np.abs(a).max()) or 1.0
        diff = float(np.abs(a - b).max()) / scale
        bound = LOOSE.get(method, TOLERANCE)
        rows.append((method, diff, bound, diff <= bound))
    return rows


def _copy(model: Any) -> Any:
    """The same model with the same weights (a tiny ViT's own initialisation is random)."""
    import copy

    return copy.deepcopy(model)


def timed(fn: Any, framework: str, repeats: int = 10) -> float:
    fn()
    synchronize(framework)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize(framework)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def speed(framework: str, device: str, size: int, batch: int) -> list[tuple[str, float, float]]:
    k = kit(framework)
    model = k.move(build("resnet50", framework), device)
    x_np = np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(np.float32)
    x = k.to_tensor(x_np, model)
    B = xplain.backend_for(model)

    def raw() -> None:
        with B.enable_grad():
            xg = B.with_grad(x)
            B.grad(B.sum(B.forward(model, xg)[:, 1]), xg)

    cases = {"raw forward+backward": raw,
             "xplain saliency": lambda: xplain.explain(model, x, method="saliency", target=1),
             "xplain gradcam layer4": lambda: xplain.explain(model, x, method="gradcam", target=1,
                                                             layer="layer4"),
             "xplain LRP-ε": lambda: xplain.explain(model, x, method="lrp", composite="epsilon", target=1),
             "xplain LRP epsilon_gamma_box": lambda: xplain.explain(
                 model, x, method="lrp", composite="epsilon_gamma_box", target=1, low=-6.0, high=6.0),
             "xplain integrated_gradients 32": lambda: xplain.explain(
                 model, x, method="integrated_gradients", target=1, steps=32)}
    if framework == "torch":
        cases.update(_peer_cases(model, x))
    base = None
    rows = []
    for name, fn in cases.items():
        t = timed(fn, framework)
        base = base or t
        rows.append((name, t * 1e3, t / base))
    return rows


def _peer_cases(model: Any, x: Any) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    try:
        from captum.attr import IntegratedGradients, Saliency

        cases["Captum saliency"] = lambda: Saliency(model).attribute(x, target=1)
        cases["Captum IG 32"] = lambda: IntegratedGradients(model).attribute(
            x, target=1, n_steps=32, internal_batch_size=x.shape[0])
    except ImportError:
        print("  captum not installed: no Captum rows", file=sys.stderr)
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = GradCAM(model=model, target_layers=[model.layer4])
        targets = [ClassifierOutputTarget(1)] * x.shape[0]
        cases["pytorch-grad-cam GradCAM layer4"] = lambda: cam(input_tensor=x, targets=targets)
    except ImportError:
        print("  grad-cam not installed: no pytorch-grad-cam rows", file=sys.stderr)
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", nargs="+", default=["torch", "paddle"])
    p.add_argument("--device", default=None, help="default: the framework's first GPU")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args(argv)
    failed = False
    for fw in args.framework:
        if fw not in installed():
            print(f"## {fw}: not installed, skipped\n")
            continue
        device = args.device or gpu_device(fw)
        if device is None:
            print(f"## {fw}: no GPU found (pass --device cpu for a dry run)\n")
            continue
        deterministic(fw)
        print(f"## {fw} on {device}: every method against the CPU (size {args.size}, batch {args.batch})\n")
        print("| method | max abs diff / max abs cpu | bound | ok |\n|---|---:|---:|---|")
        for method, diff, bound, ok in equality(fw, device, args.size, args.batch):
            failed |= not ok
            print(f"| {method} | {diff:.2e} | {bound:.0e} | {'yes' if ok else '**NO**'} |")
        if not args.skip_speed:
            print(f"\n## {fw} on {device}: resnet50, batch {args.batch}, {args.size}²\n")
            print("| case | ms | × raw fwd+bwd |\n|---|---:|---:|")
            for name, ms, ratio in speed(fw, device, args.size, args.batch):
                print(f"| {name} | {ms:.1f} | {ratio:.2f} |")
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
