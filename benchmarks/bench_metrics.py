"""Faithfulness metrics: batched deletion curves against the one-forward-per-step limit.

No peer library for deletion/insertion is installed here (Quantus is not), so the comparison is
with the cost floor measured in the same process: ``steps + 1`` forwards of batch 1 without
gradients, i.e. what a hand-written loop over deletion steps costs. xplain builds the perturbed
inputs with tensor operators and forwards them in chunks under the memory budget.

Cases: resnet18, batch 1, 224² (``quick``: 112²), 50 steps (``quick``: 20), zero baseline, on
torch and paddle.

Run standalone: ``PYTHONPATH=.:backends python benchmarks/bench_metrics.py [--quick]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "backends")]

from common import Table, make_input, median_time, raw_forward_backward, set_threads  # noqa: E402
from xplain import backend_for, metrics  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402


def main(quick: bool = False) -> Table:
    size, steps = (112, 20) if quick else (224, 50)
    table = Table()
    for framework in ("torch", "paddle"):
        set_threads(framework)
        model = build("resnet18", framework)
        x = make_input(framework, 1, size)
        B = backend_for(model)
        attr = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        base = median_time(raw_forward_backward(framework, model, x), repeats=3)

        def loop(B=B, model=model, x=x) -> None:  # the floor: one no-grad forward per step
            with B.no_grad():
                for _ in range(steps + 1):
                    B.forward(model, x)

        def ours(model=model, x=x, attr=attr) -> None:
            metrics.deletion(model, x, attr, target=0, steps=steps, baseline=0.0)

        floor = median_time(loop, repeats=1)
        t = median_time(ours, repeats=1)
        table.add(f"deletion, {steps} steps", framework, "resnet18", t, base,
                  f"{t / floor:.2f}x the {steps + 1}-forward loop ({floor * 1000:.0f} ms)")
    return table


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv).markdown())
