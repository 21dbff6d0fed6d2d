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
from common import Table, make_input, median_time, raw_forward_backward, set_threads  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle")) -> Table:
    table = Table()
    batch, size, repeats = (2, 224, 3) if quick else (8, 224, 5)
    for fw in frameworks:
        set_threads(fw)
        model = build("resnet18", fw)
        x = make_input(fw, batch, size)
        base = median_time(raw_forward_backward(fw, model, x), repeats=repeats)
        table.add("raw forward+backward", fw, "resnet18", base, base, f"batch {batch}, {size}²")
        for method in ("saliency", "input_x_gradient"):
            t = median_time(lambda m=method, model=model, x=x: xplain.explain(model, x, m, target=0),
                            repeats=repeats)
            table.add(f"xplain {method}", fw, "resnet18", t, base)
        if fw == "torch":
            try:
                from captum.attr import Saliency
            except ImportError:
                continue
            sal = Saliency(model)
            t = median_time(lambda x=x, sal=sal: sal.attribute(x, target=0), repeats=repeats)
            table.add("captum Saliency", fw, "resnet18", t, base)
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(main(args.quick).markdown())
