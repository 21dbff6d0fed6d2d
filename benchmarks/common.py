"""Shared timing helpers for the benchmark scripts.

Every number is reported as a *ratio* against a raw forward+backward pass of the same model on
the same batch, timed in the same process (median of ``repeats`` after ``warmup`` runs), so
tables stay comparable across machines. Peer libraries are timed in the same run when installed.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np

THREADS = int(os.environ.get("XPLAIN_BENCH_THREADS", "2"))


def set_threads(framework: str, n: int = THREADS) -> None:
    """Pin the framework's CPU thread count (Paddle defaults to one thread)."""
    from xplain.modelkit import kit

    kit(framework).set_threads(n)


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` in seconds: wall time by default; ``clock=time.process_time``
    gives process CPU time, which on a loaded machine measures the work, not the neighbours."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per case, measured round-robin (one round of every case, then the next),
    so that load from other processes and allocator warm-up hit every case alike."""
    return {k: statistics.median(v) for k, v in interleaved_rounds(cases, repeats, warmup).items()}


def interleaved_rounds(cases: dict[str, Callable[[], Any]], repeats: int,
                       warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per case and round, measured round-robin (see :func:`interleaved`)."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def round_spread(times: dict[str, list[float]], case: str, base: str = "raw") -> str:
    """The lowest and highest ratio of ``case`` to ``base`` within one round, over the rounds
    (how far one round's ratio strays from the median's on this machine)."""
    ratios = [c / b for c, b in zip(times[case], times[base])]
    return f"rounds {min(ratios):.2f}–{max(ratios):.2f}"


def raw_forward_backward(framework: str, model: Any, x: Any) -> Callable[[], None]:
    """The reference cost: one forward and one backward to the input, no xplain involved —
    hence written in each framework's own calls rather than through a backend."""
    if framework == "torch":
        import torch

        def run() -> None:
            xg = x.detach().requires_grad_(True)
            out = model(xg)
            (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
    else:
        import paddle

        def run() -> None:
            xg = x.detach()
            xg.stop_gradient = False
            out = model(xg)
            (g,) = paddle.grad(out[:, 0].sum(), xg)
    return run


def forward_only(framework: str, model: Any, x: Any) -> Callable[[], None]:
    """One no-grad forward pass (the unit of Score-CAM's and occlusion's limits)."""
    if framework == "torch":
        import torch

        def run() -> None:
            with torch.no_grad():
                model(x)
    else:
        import paddle

        def run() -> None:
            with paddle.no_grad():
                model(x)
    return run


def make_input(framework: str, batch: int, size: int, channels: int = 3, seed: int = 0) -> Any:
    """A seeded standard-normal batch ``(batch, channels, size, size)`` as a CPU tensor."""
    from xplain.modelkit import kit

    a = np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32)
    return kit(framework).to_tensor(a)


@dataclass
class Table:
    """Rows of ``(case, framework, model, seconds, ratio vs raw fwd+bwd, note)``."""

    rows: list[tuple] = field(default_factory=list)

    def add(self, case: str, framework: str, model: str, seconds: float, base: float, note: str = "") -> None:
        self.rows.append((case, framework, model, seconds, seconds / base, note))
        print(f"  {case:<34} {framework:<7} {model:<10} {seconds*1000:9.1f} ms  {seconds/base:6.2f}x fwd+bwd  {note}",
              flush=True)

    def markdown(self) -> str:
        lines = ["| case | backend | model | time (ms) | × raw fwd+bwd | note |",
                 "|---|---|---|---:|---:|---|"]
        for case, fw, model, s, r, note in self.rows:
            lines.append(f"| {case} | {fw} | {model} | {s*1000:.1f} | {r:.2f} | {note} |")
        return "\n".join(lines)
