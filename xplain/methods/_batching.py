"""Chunking of "K variants of each of N samples" work (IG steps, noise samples, occlusion
windows, RISE masks) into model batches that respect the run's memory budget.

Variants are laid out variant-major: flat index ``j = k * N + i`` for variant ``k`` of sample
``i``. A block is a rectangle ``[k0, k1) × [i0, i1)`` of that grid; when the chunk size holds
all N samples, blocks are whole rows of variants, otherwise single variants over a slice of the
samples. Either way the batches are as large as the budget allows, never one sample at a time.
"""
from __future__ import annotations

from typing import NamedTuple
from collections.abc import Iterator

import numpy as np

from ..backend import Tensor
from ..run import Run


class Block(NamedTuple):
    k0: int
    k1: int
    i0: int
    i1: int

    @property
    def size(self) -> int:
        return (self.k1 - self.k0) * (self.i1 - self.i0)


def blocks(run: Run, n: int, k: int, *, backward: bool = True) -> Iterator[Block]:
    """Blocks covering the ``k × n`` grid in variant-major order, each at most
    ``run.chunk_size(backward=backward)`` samples."""
    cs = run.chunk_size(backward=backward)
    if cs >= n:
        per = _balanced(k, cs // n)
        for k0 in range(0, k, per):
            yield Block(k0, min(k, k0 + per), 0, n)
    else:
        per = _balanced(n, cs)
        for kk in range(k):
            for i0 in range(0, n, per):
                yield Block(kk, kk + 1, i0, min(n, i0 + per))


def _balanced(total: int, most: int) -> int:
    """The smallest chunk that needs as few chunks as ``most`` does: 50 steps under a limit
    of 48 run as 25 + 25, not 48 + 2 (a tiny last batch wastes a pass's fixed costs)."""
    count = -(-total // max(1, most))
    return -(-total // count)


def tile(run: Run, x: Tensor, reps: int) -> Tensor:
    """``x`` (n, ...) repeated ``reps`` times along a new leading axis, flattened to
    ``(reps * n, ...)`` (variant-major, matching :func:`blocks`)."""
    B = run.backend
    shape = B.shape(x)
    if reps == 1:
        return x
    return B.reshape(B.broadcast_to(B.reshape(x, (1,) + shape), (reps,) + shape),
                     (reps * shape[0],) + shape[1:])


def lead(run: Run, values: np.ndarray, like: Tensor, ndim: int) -> Tensor:
    """Numpy ``values`` of shape ``(K,)`` as a tensor ``(K, 1, ..., 1)`` with ``ndim`` dims."""
    v = np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))
    return run.backend.asarray(v, like=like)


class Accumulator:
    """Per-sample-slice running sums: blocks of one sample slice ``[i0, i1)`` add into the
    same tensor; :meth:`result` concatenates the slices in sample order."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.parts: dict[tuple[int, int], Tensor] = {}

    def add(self, i0: int, i1: int, value: Tensor) -> None:
        key = (i0, i1)
        self.parts[key] = value if key not in self.parts else self.parts[key] + value

    def result(self) -> Tensor:
        keys = sorted(self.parts)
        if len(keys) == 1:
            return self.parts[keys[0]]
        return self.run.backend.concat([self.parts[k] for k in keys], axis=0)
