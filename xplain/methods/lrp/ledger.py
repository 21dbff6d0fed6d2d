"""The conservation ledger: relevance absorbed by biases and stabilisers, per sample, read in the
same backward pass that computes the relevance (docs/architecture.md §3).

LRP conserves relevance up to what biases and stabilisers absorb: per sample, the target output
equals Σ relevance (at the input) + Σ absorbed. Each rule's absorption is known in closed form
from the gradient ``g`` arriving at the layer's output:

* ε on an affine layer (bias ``b``, BatchNorm merged): ``Σ y·g − Σ (y − b)·g̃`` with ``g̃`` the
  gradient the ε rule hands on, i.e. ``ε·Σ g·y/(|y| + ε)`` (the stabiliser, computed by the
  ε kernel from the tensor it keeps anyway) ``+ Σ b·g̃`` (the bias);
* LRP-0 (the gradient) on an affine layer: ``Σ g·b``;
* pass on ``y = f(a)``: ``Σ g·y − Σ g_a·a`` with ``g_a = g·(y − f(0))/stab(a)`` the gradient
  the rule hands to ``a`` (the offset ``f(0)`` and the stabiliser);
* a gate, ReLU, pooling, sums: nothing (their gradient is exact LRP).

Each sum is a per-sample dot product (``Backend.batch_dot``: no full-size temporary) or a
per-channel reduction. Rules that re-evaluate a layer with modified weights (z⁺, γ, αβ, flat, w², z^B, tested against
numpy references) are *measured*: ``Σ y·g`` at their output minus ``Σ a·g`` at an alias of their
input that only they read. Relevance that a layer or a functional operation xplain does not see
creates or loses (a ``torch.sigmoid`` in the forward, an unknown rule) is therefore not in the
ledger, and the balance shows it: :class:`Conservation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import LayerError


#: Relative tolerance of the balance: float32 sums over 1e5–1e6 terms carry ~1e-6 relative
#: error each; measured on both zoos ≤ 5e-5 (tests/test_lrp_zoo.py). 1e-3 is 20× above that
#: and far below what a lost gate or a wrong rule produces (O(1) and more).
TOLERANCE = 1e-3


def per_sample(B: Any, t: Any) -> Any:
    """Σ over every axis but the batch axis, accumulated in float64 (relevance of both signs
    cancels over a whole image; paddle's float32 reduction lost 5e-4 of the target there)."""
    nd = len(B.shape(t))
    wide = B.astype(t, "float64")
    return B.sum(wide, axis=tuple(range(1, nd))) if nd > 1 else wide


def _channels(B: Any, bias: Any, like: Any) -> Any:
    """A per-channel ``bias`` shaped to broadcast against ``like`` (channels on axis 1)."""
    return B.reshape(bias, (1, -1) + (1,) * (len(B.shape(like)) - 2))


@dataclass
class Ledger:
    """Absorbed relevance per layer call, filled by gradient watches during one backward pass.

    ``entries`` maps a layer name to a list of per-sample tensors (one per call and part)."""

    B: Any
    entries: dict[str, list] = field(default_factory=dict)
    #: errors found in the backward pass, raised by :meth:`refusal` after it (an exception
    #: raised inside a gradient hook reaches the caller wrapped by some frameworks)
    problems: list[Exception] = field(default_factory=list)

    def _add(self, name: str, value: Any) -> None:
        self.entries.setdefault(name, []).append(value)

    def _watch(self, t: Any, fn: Any) -> None:
        """``fn(g)`` in the backward pass; a gradient a custom backward left undefined
        (``None``: nothing flows there) adds nothing."""
        self.B.watch_gradient(t, lambda g: None if g is None else fn(g))

    def values(self, t: Any, copy: bool) -> Any:
        """``t``'s values now: a copy where the model changes ``t`` in place later
        (``Probe.modified_outputs``), else the tensor itself (no pass over it)."""
        return self.B.stop_gradient(t) + 0.0 if copy else self.B.stop_gradient(t)

    def adder(self, name: str) -> Any:
        """A callback adding a per-sample amount to layer ``name`` (for kernels that compute
        their share in the backward pass, as ``LRPKernels.damp_gradient`` does)."""
        return lambda value: self._add(name, value)

    def out(self, name: str, y: Any, values: Any) -> None:
        """``+Σ y·g`` (the relevance entering the layer) at output ``y`` with ``values``."""
        B = self.B
        self._watch(y, lambda g: self._add(name, B.batch_dot(g, values)))

    def _bias_share(self, g: Any, bias: Any, last: bool) -> Any:
        """``Σ_c b_c Σ_rest g`` per sample: channel sums first, so no full-size temporary.
        Channels on axis 1, or with ``last`` on the last axis (a linear layer on tokens)."""
        B = self.B
        nd = len(B.shape(g))
        rest = tuple(range(1, nd - 1)) if last else tuple(range(2, nd))
        per_channel = B.sum(g, axis=rest) if nd > 2 else g
        return B.sum(per_channel * B.reshape(bias, (1, -1)), axis=1)

    def bias(self, name: str, y: Any, bias: Any, last: bool = False) -> None:
        """LRP-0 on an affine output ``y`` with ``bias``: ``Σ g·b`` (``last``: see
        :meth:`_bias_share`)."""
        if bias is None:
            return
        self._watch(y, lambda g: self._add(name, self._bias_share(g, bias, last)))

    def passed(self, name: str, out: Any, values: Any, source: Any, info: Any, copy: bool) -> None:
        """pass on ``y = f(a)`` emitted as ``out``, its gradient routed into ``source`` (an alias
        of ``a`` that only the rule reads): ``Σ g·y − Σ g_a·a``, with ``values`` of ``y`` and
        ``g_a`` the gradient reaching ``source``. ``a`` is read in the backward pass (no product
        kept from the forward), from a copy where the probe saw it changed in place later
        (``copy``, ``Probe.inputs_changed_later``); a model that changed it anyway (its control
        flow differs from the probe's) is refused."""
        B = self.B
        a = self.values(source, copy)
        version = B.version(a)

        def fn(g: Any) -> None:
            if B.version(a) != version:  # raised after the backward (see refusal)
                self.problems.append(LayerError(
                    f"the input of {info.name!r} ({info.type_name}) was changed in place after the "
                    f"layer read it, so LRP's conservation ledger cannot read it; give the layer "
                    f"that changes it inplace=False, or pass rules={{{info.name!r}: 'zero'}}"))
                return
            self._add(name, -B.batch_dot(g, a))
        self.out(name, out, values)
        self._watch(source, fn)

    def watch_constant(self, name: str, t: Any, p: Any, prefix: int | None) -> None:
        """``Σ p·g`` at ``t``, which is a signal plus the constant ``p`` (broadcast), or, with
        ``prefix=k``, starts with ``p`` along axis 1 (``t[:, :k] == p``)."""
        B = self.B

        def fn(g: Any) -> None:
            part = g if prefix is None else g[:, :prefix]
            self._add(name, B.batch_dot(part, B.broadcast_to(p, B.shape(part))))
        self._watch(t, fn)

    def measured_out(self, name: str, out: Any, copy: bool = False) -> None:
        """``+Σ y·g`` at a measured layer's output ``out``."""
        self.out(name, out, self.values(out, copy))

    def measured_in(self, name: str, alias: Any) -> None:
        """``−Σ a·g`` at the alias of a measured layer's input."""
        B = self.B
        a = B.stop_gradient(alias)
        self._watch(alias, lambda g: self._add(name, -B.batch_dot(g, a)))

    def refusal(self) -> None:
        """Raise the first problem the backward pass found, if any."""
        if self.problems:
            # taken off the ledger first: the raised error's traceback reaches the ledger
            problem, self.problems = self.problems[0], []
            raise problem

    def add(self, name: str, value: Any) -> None:
        """A per-sample amount computed outside the backward pass (explicit first-layer rules:
        ``−Σ`` of the relevance read at their modified inputs)."""
        self._add(name, value)

    def per_layer(self, samples: int | None = None) -> dict[str, np.ndarray]:
        """Absorbed relevance per layer, per sample (float64 numpy). A layer that computes on
        windows its container cut each sample into (PaddleClas's Swin: ``(N·windows, T, C)``)
        books one amount per window: summed per sample, the windows batch-major as every
        window partition lays them out (sequence-first layers, whose rows are not samples,
        are refused before the pass: ``Probe.sequence_first``)."""
        out = {}
        for name, parts in self.entries.items():
            total = None
            for p in parts:
                v = self.B.to_numpy(p).astype(np.float64).reshape(-1)
                if samples is not None and v.size != samples:
                    if v.size % samples:
                        raise LayerError(f"layer {name!r} booked {v.size} amounts for {samples} "
                                         f"samples; xplain cannot tell which sample each belongs to")
                    v = v.reshape(samples, -1).sum(axis=1)
                total = v if total is None else total + v
            out[name] = total
        return out


@dataclass
class Conservation:
    """The per-sample relevance balance of one LRP call (``exp.conservation``).

    Attributes:
        target: the explained output per sample (the logit), ``(N,)``.
        relevance: Σ relevance at the input per sample, ``(N,)``.
        absorbed: Σ relevance absorbed by biases and stabilisers per sample, ``(N,)``.
        layers: absorbed relevance per layer name, each ``(N,)``.
        tolerance: the relative tolerance of :attr:`balanced`.
    """

    target: np.ndarray
    relevance: np.ndarray
    absorbed: np.ndarray
    layers: dict[str, np.ndarray]
    tolerance: float = TOLERANCE

    @property
    def error(self) -> np.ndarray:
        """``|target − relevance − absorbed|`` relative to the largest of ``|target|``,
        ``|relevance|`` and the absorbed amounts (absorption can exceed the target with a
        large ε), per sample."""
        scale = np.maximum.reduce([np.abs(self.target), np.abs(self.relevance),
                                   sum((np.abs(v) for v in self.layers.values()),
                                       np.zeros_like(self.target)),
                                   np.full_like(self.target, 1e-30)])
        return np.abs(self.target - self.relevance - self.absorbed) / scale

    @property
    def balanced(self) -> np.ndarray:
        """Per sample: whether the balance holds within :attr:`tolerance`."""
        return self.error <= self.tolerance

    def largest(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` layers that absorbed the most relevance (summed |·| over samples)."""
        ranked = sorted(((n, float(np.abs(v).sum())) for n, v in self.layers.items()),
                        key=lambda item: -item[1])
        return ranked[:k]
