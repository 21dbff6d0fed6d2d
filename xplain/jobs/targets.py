"""Which classes a folder job explains: ``top1``, ``topk:K``, a class index or a class name."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import TargetError


@dataclass(frozen=True)
class TargetSpec:
    """``k`` top classes per image (``index is None``), or one fixed class ``index``."""

    text: str
    k: int = 1
    index: int | None = None

    def choose(self, probabilities: np.ndarray) -> list[list[int]]:
        """The classes to explain per image from ``(N, classes)`` probabilities, most probable
        first (ties: the lower index)."""
        n, c = probabilities.shape
        if self.index is not None:
            if not 0 <= self.index < c:
                raise TargetError(f"--target {self.text}: class {self.index} is out of range; the "
                                  f"model outputs {c} classes (0 to {c - 1})")
            return [[self.index] for _ in range(n)]
        if self.k > c:
            raise TargetError(f"--target {self.text}: the model outputs only {c} classes")
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :self.k]
        return [[int(t) for t in row] for row in order]


def parse_target(text: str | int | None, names: Sequence[str] | None) -> TargetSpec:
    """``None``/``"top1"``, ``"topk:K"``, an index (``"281"``) or a class name (exact, then
    case-insensitive) → :class:`TargetSpec`."""
    if text is None:
        return TargetSpec("top1")
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return TargetSpec(str(text), index=int(text))
    t = str(text).strip()
    low = t.lower()
    if low == "top1":
        return TargetSpec(t)
    if low.startswith("topk:") or low.startswith("top"):
        digits = low[5:] if low.startswith("topk:") else low[3:]
        if digits.isdigit() and int(digits) >= 1:
            return TargetSpec(t, k=int(digits))
    if t.lstrip("-").isdigit():
        return TargetSpec(t, index=int(t))
    if names:
        if t in names:
            return TargetSpec(t, index=list(names).index(t))
        folded = [n.lower() for n in names]
        if low in folded:
            return TargetSpec(t, index=folded.index(low))
        near = [n for n in names if low in n.lower()][:5]
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise TargetError(f"--target {t!r} is not a class name of this model{hint}")
    raise TargetError(f"--target {t!r}: use top1, topk:K, a class index, or a class name "
                      f"(class names need --labels FILE for a model outside the zoos)")
