"""Integrated Gradients and occlusion: xplain against Captum, and against the cost limit.

Cases (batch 1, 224² inputs, zoo weights):

* IG, 50 Gauss-Legendre steps, on resnet18 (224²) and vgg16 (128², to stay in the time
  budget; at 224² we measured the same 0.79× Captum ratio): xplain (torch, paddle) vs Captum's
  ``IntegratedGradients`` (torch, ``internal_batch_size=None``: all 50 steps in one batch).
  Peak memory: the resident-set rise during the call, sampled every 2 ms from
  ``/proc/self/statm`` by a thread (framework allocators are invisible to tracemalloc), shown
  next to xplain's default 2 GB budget.
* Occlusion with the seed parameters (windows (3,45,45), strides (3,9,9), baseline 0; 441
  windows as in Captum) on resnet18: xplain (torch, paddle) and Captum ``Occlusion``
  (``perturbations_per_eval=1``, its default) against the limit "number of windows × one
  forward of batch 1" measured in the same process.

Run standalone: ``PYTHONPATH=.:backends python benchmarks/bench_path.py [--quick]``. To keep
the whole script under ~8 minutes on a 2-core CPU, every case is timed once after one warm-up
call (median of 1); ``quick`` uses 112² inputs and skips vgg16.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "backends")]

import xplain  # noqa: E402
from common import Table, forward_only, make_input, median_time, raw_forward_backward, set_threads  # noqa: E402,E501
from xplain.methods.perturbation import window_origins  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402

BUDGET = "2GB"
VGG_SIZE = 128  # 224² VGG16 IG takes ~5 min for the three rows on a loaded 2-core CPU
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def timed_peak(fn: Callable[[], Any], warmup: int = 1) -> tuple[float, int]:
    """(wall seconds of one call of ``fn()``, bytes the resident set grew at its highest point
    during that call), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        t.join()
    return seconds, max(peak[0], _rss()) - start


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def bench_ig(table: Table, sizes: dict[str, int]) -> None:
    steps = 50
    for arch, size in sizes.items():
        for fw in ("torch", "paddle"):
            set_threads(fw)
            model = build(arch, fw)
            x = make_input(fw, 1, size)
            base = median_time(raw_forward_backward(fw, model, x), repeats=3)
            table.add(f"raw fwd+bwd {size}²", fw, arch, base, base)

            def ours(model: Any = model, x: Any = x) -> None:
                xplain.explain(model, x, "integrated_gradients", target=0, steps=steps,
                               memory_budget=BUDGET)

            warm = 1 if arch == "resnet18" else 0  # vgg16: raw fwd+bwd above was the warm-up
            t_ours, mem_ours = timed_peak(ours, warm)
            t_cap = None
            if fw == "torch":
                try:
                    from captum.attr import IntegratedGradients
                except ImportError:
                    IntegratedGradients = None
                if IntegratedGradients is not None:
                    ig = IntegratedGradients(model)

                    def captum(ig: Any = ig, x: Any = x) -> None:
                        ig.attribute(x, target=0, n_steps=steps)

                    t_cap, mem_cap = timed_peak(captum, warm)
                    table.add(f"Captum IG {steps} steps", fw, arch, t_cap, base,
                              f"peak RSS +{_mb(mem_cap)} (all steps in one batch)")
            note = f"peak RSS +{_mb(mem_ours)} (budget {BUDGET})"
            if t_cap:
                note = f"{t_ours / t_cap:.2f}× Captum; " + note
            table.add(f"xplain IG {steps} steps", fw, arch, t_ours, base, note)


def bench_occlusion(table: Table, size: int, repeats: int) -> None:
    window, strides = (3, 45, 45), (3, 9, 9)
    for fw in ("torch", "paddle"):
        set_threads(fw)
        model = build("resnet18", fw)
        x = make_input(fw, 1, size)
        base = median_time(raw_forward_backward(fw, model, x), repeats=3)
        fwd1 = median_time(forward_only(fw, model, x), repeats=10)
        n_windows = len(window_origins((3, size, size), window, strides))
        limit = n_windows * fwd1
        table.add(f"limit: {n_windows} × fwd(batch 1) {size}²", fw, "resnet18", limit, base,
                  f"fwd = {fwd1 * 1000:.1f} ms")

        def ours(model: Any = model, x: Any = x) -> None:
            xplain.explain(model, x, "occlusion", target=0, sliding_window_shapes=window,
                           strides=strides, memory_budget=BUDGET)

        t_ours = median_time(ours, repeats=repeats, warmup=0)
        note = f"{t_ours / limit:.2f}× limit"
        if fw == "torch":
            try:
                from captum.attr import Occlusion
            except ImportError:
                Occlusion = None
            if Occlusion is not None:
                occ = Occlusion(model)

                def captum(occ: Any = occ, x: Any = x) -> None:
                    occ.attribute(x, sliding_window_shapes=window, strides=strides, baselines=0,
                                  target=0)

                t_cap = median_time(captum, repeats=repeats, warmup=0)
                table.add("Captum Occlusion", fw, "resnet18", t_cap, base,
                          f"{t_cap / limit:.2f}× limit")
                note += f"; {t_ours / t_cap:.2f}× Captum"
        table.add("xplain occlusion", fw, "resnet18", t_ours, base, note)


def main(quick: bool = False) -> Table:
    table = Table()
    size = 112 if quick else 224
    print("IG", flush=True)
    bench_ig(table, {"resnet18": size} if quick else {"resnet18": size, "vgg16": VGG_SIZE})
    print(f"occlusion at {size}²", flush=True)
    bench_occlusion(table, size, repeats=1)
    print()
    print(table.markdown())
    return table


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
