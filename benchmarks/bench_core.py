"""Foundation benchmark: saliency / input×gradient against a raw forward+backward.

The issue's bar: saliency on resnet18, batch 8 at 224², ≤ 1.05× a raw forward+backward, on both
backends. Captum's Saliency is timed in the same run when installed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "backends")]

import xplain  # noqa: E402
from common import Table, interleaved, make_input, raw_forward_backward, set_threads  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle")) -> Table:
    table = Table()
    batch, size, repeats = (2, 224, 3) if quick else (8, 224, 7)
    for fw in frameworks:
        set_threads(fw)
        model = build("resnet18", fw)
        x = make_input(fw, batch, size)
        cases = {"raw forward+backward": raw_forward_backward(fw, model, x)}
        for method in ("saliency", "input_x_gradient"):
            cases[f"xplain {method}"] = (lambda m=method, model=model, x=x:
                                         xplain.explain(model, x, m, target=0))
        if fw == "torch":
            try:
                from captum.attr import Saliency

                sal = Saliency(model)
                cases["captum Saliency"] = lambda x=x, sal=sal: sal.attribute(x, target=0)
            except ImportError:
                pass
        times = interleaved(cases, repeats)
        base = times["raw forward+backward"]
        for case, t in times.items():
            table.add(case, fw, "resnet18", t, base, f"batch {batch}, {size}²" if case.startswith("raw") else "")
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(main(args.quick).markdown())
