"""LRP benchmark: composites against a raw forward+backward, and against Zennit in the same run.

The issue's bar (resnet50 and vgg16, batch 8, 224², CPU): LRP-ε ≤ 1.2× a raw forward+backward;
``epsilon_gamma_box`` / ``epsilon_plus_flat`` ≤ 1.6× and faster than Zennit's equivalent
composite (with the torchvision canonizers Zennit needs for BatchNorm and residual sums).
``--quick`` uses batch 2 and fewer repeats.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "backends")]

import xplain  # noqa: E402
from common import Table, make_input, median_time, raw_forward_backward, set_threads  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402

CASES = (
    ("LRP-ε (composite epsilon)", {"composite": "epsilon"}),
    ("epsilon_plus_flat", {"composite": "epsilon_plus_flat"}),
    ("epsilon_gamma_box", {"composite": "epsilon_gamma_box", "low": -3.0, "high": 3.0}),
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
    return EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canon)


def _zennit_call(model, x, composite):
    import torch
    from zennit.attribution import Gradient

    onehot = torch.zeros(x.shape[0], 1000)
    onehot[:, 0] = 1.0

    def run() -> None:
        with Gradient(model=model, composite=composite) as attributor:
            attributor(x.detach().requires_grad_(True), onehot)
    return run


def cpu_median_time(fn, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median *process CPU* time of ``fn()`` (run with one thread, so no spin-waiting counts)."""
    return median_time(fn, repeats=repeats, warmup=warmup, clock=time.process_time)


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle"),
         models: tuple[str, ...] = ("resnet50", "vgg16"), clock: str = "wall") -> Table:
    """Time every case; ``clock="cpu"`` uses process CPU time with one thread (loaded machines)."""
    table = Table()
    batch, size, repeats = (2, 224, 3) if quick else (8, 224, 5)
    timer = cpu_median_time if clock == "cpu" else median_time
    for fw in frameworks:
        set_threads(fw, 1) if clock == "cpu" else set_threads(fw)
        for name in models:
            model = build(name, fw)
            x = make_input(fw, batch, size)
            base = timer(raw_forward_backward(fw, model, x), repeats=repeats)
            table.add("raw forward+backward", fw, name, base, base, f"batch {batch}, {size}², {clock} clock")
            for case, opts in CASES:
                t = timer(lambda o=opts, m=model, xx=x: xplain.explain(m, xx, method="lrp", target=0, **o),
                          repeats=repeats)
                table.add(f"xplain {case}", fw, name, t, base)
                if fw == "torch":
                    comp = _zennit(name, case)
                    if comp is not None:
                        t = timer(_zennit_call(model, x, comp), repeats=repeats)
                        table.add(f"zennit {case}", fw, name, t, base)
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--framework", action="append", choices=("torch", "paddle"))
    p.add_argument("--model", action="append", choices=("resnet50", "vgg16", "resnet18"))
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args()
    print(main(args.quick, tuple(args.framework or ("torch", "paddle")),
               tuple(args.model or ("resnet50", "vgg16")), args.clock).markdown())
