"""LRP benchmark: composites against a raw forward+backward, and against Zennit in the same run.

The bars (resnet50 and vgg16, batch 8, 224², CPU): LRP-ε ≤ 1.2× a raw forward+backward;
``epsilon_gamma_box`` / ``epsilon_plus_flat`` ≤ 1.6× and faster than Zennit's equivalent
composite (with the torchvision canonizers Zennit needs for BatchNorm and residual sums).
efficientnet_b0 and mobilenet_v3_large (squeeze-and-excitation gates, SiLU/Hardswish, random
weights with calibrated BatchNorm from :mod:`xplain.testing.classifiers`): LRP ≤ 1.6×; Zennit
has no canonizer for their gates, so no peer row. Each case is also timed on the reference LRP
kernels alone (plain backend ops, :func:`xplain.methods.lrp.kernels.reference_only`; in a group
of its own with its own raw baseline), so the table says what the backends' fused kernels buy. ``--quick`` uses batch 2 and fewer repeats.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "backends")]

import xplain  # noqa: E402
from xplain.methods.lrp.kernels import reference_only  # noqa: E402
from common import (Table, forward_only, interleaved, interleaved_rounds, make_input,  # noqa: E402
                    raw_forward_backward, round_spread, set_threads)
from xplain.testing import classifiers  # noqa: E402
from xplain.testing.zoo import VISION_MODELS, build  # noqa: E402

CASES = (
    ("LRP-ε (composite epsilon)", {"composite": "epsilon"}),
    ("epsilon_plus_flat", {"composite": "epsilon_plus_flat"}),
    ("epsilon_gamma_box", {"composite": "epsilon_gamma_box", "low": -6.0, "high": 6.0}),
)


def _zennit(name: str, case: str):
    """Zennit's composite equivalent to ``case`` for torchvision model ``name``, or None."""
    try:
        import torch
        from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite, layer_map_base
        from zennit.rules import Epsilon
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
        from zennit.types import Convolution
    except ImportError:
        return None
    canon = [ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()]
    if case.startswith("LRP-ε"):
        return LayerMapComposite(layer_map_base() + [(Convolution, Epsilon()), (torch.nn.Linear, Epsilon())],
                                 canonizers=canon)
    if case == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canon)
    return EpsilonGammaBox(low=-6.0, high=6.0, canonizers=canon)


def _zennit_call(model, x, composite):
    import torch
    from zennit.attribution import Gradient

    onehot = torch.zeros(x.shape[0], 1000)
    onehot[:, 0] = 1.0

    def run() -> None:
        with Gradient(model=model, composite=composite) as attributor:
            attributor(x.detach().requires_grad_(True), onehot)
    return run


def _on_reference(run: Callable[[], Any]) -> Any:
    with reference_only():
        return run()


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle"),
         models: tuple[str, ...] = ("resnet50", "vgg16", "efficientnet_b0", "mobilenet_v3_large"),
         repeats: int | None = None) -> Table:
    """Time xplain's cases *interleaved* with the raw forward+backward (one round of every
    case, then the next; medians), so load and allocator state hit the baseline and the cases
    alike. Zennit runs in a second interleaved group with its own raw baseline: its passes
    allocate several times more memory, and run between xplain's they changed xplain's times
    by up to 30% through the allocator (glibc returning and re-faulting pages)."""
    table = Table()
    batch, size, default_repeats = (2, 224, 3) if quick else (8, 224, 5)
    repeats = repeats or default_repeats
    for fw in frameworks:
        set_threads(fw)
        for name in models:
            if name not in VISION_MODELS and name not in classifiers.names(fw):
                continue  # efficientnet: torchvision only
            model = (build(name, fw) if name in VISION_MODELS
                     else classifiers.build(name, fw, num_classes=1000))
            x = make_input(fw, batch, size)
            raw = raw_forward_backward(fw, model, x)
            fwd = forward_only(fw, model, x)

            def floor(raw=raw, fwd=fwd) -> None:  # a second convolution per layer, nothing else
                raw()
                fwd()

            ours: dict[str, Callable[[], Any]] = {"raw": raw, "floor": floor}
            peers: dict[str, Callable[[], Any]] = {}
            refs: dict[str, Callable[[], Any]] = {}
            for case, opts in CASES:
                ours[case] = (lambda o=opts, m=model, xx=x: xplain.explain(m, xx, method="lrp", target=0, **o))
                refs[case] = (lambda f=ours[case]: _on_reference(f))
                comp = _zennit(name, case) if fw == "torch" and name in VISION_MODELS else None
                if comp is not None:
                    peers[case] = _zennit_call(model, x, comp)
            rounds = interleaved_rounds(ours, repeats)
            t = {k: statistics.median(v) for k, v in rounds.items()}
            tp = interleaved({"raw": raw, **peers}, repeats) if peers else {}
            # the reference kernels allocate more: a group of their own, like Zennit's
            tr = interleaved({"raw": raw, **refs}, repeats)
            base = t["raw"]
            table.add("raw forward+backward", fw, name, base, base, f"batch {batch}, {size}²")
            table.add("floor: raw + one no-grad forward", fw, name, t["floor"], base,
                      "the least a rule with a second convolution per layer (z⁺, γ) can cost")
            for case, _ in CASES:
                spread = round_spread(rounds, case)
                if case in peers:  # compared with Zennit as ratios to each group's own raw baseline
                    mine, theirs = t[case] / base, tp[case] / tp["raw"]
                    table.add(f"xplain {case}", fw, name, t[case], base, f"{mine / theirs:.2f}× Zennit; {spread}")
                else:
                    table.add(f"xplain {case}", fw, name, t[case], base, spread)
                ref = tr[case] / tr["raw"]
                table.add(f"xplain {case}, reference kernels only", fw, name, tr[case], tr["raw"],
                          f"the fused kernels are {ref / (t[case] / base):.2f}× faster")
                if case in peers:
                    table.add(f"zennit {case}", fw, name, tp[case], tp["raw"],
                              f"own raw baseline {tp['raw'] * 1000:.0f} ms")
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--framework", action="append", choices=("torch", "paddle"))
    p.add_argument("--model", action="append",
                   choices=("resnet50", "vgg16", "resnet18", "efficientnet_b0", "mobilenet_v3_large"))
    p.add_argument("--repeats", type=int, help="rounds per group (default 5; 3 with --quick)")
    args = p.parse_args()
    print(main(args.quick, tuple(args.framework or ("torch", "paddle")),
               tuple(args.model or ("resnet50", "vgg16", "efficientnet_b0", "mobilenet_v3_large")),
               args.repeats).markdown())
