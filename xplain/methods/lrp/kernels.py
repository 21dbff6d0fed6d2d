"""LRP's kernels: the nine operations only LRP needs, behind a protocol of their own.

The LRP engine computes each rule's gradient route with these calls. :class:`ReferenceKernels`
implements every one in plain :class:`~xplain.backend.Backend` ops, straight from its defining
formula, so a new backend runs LRP with nothing LRP-specific to write. A backend may register
faster versions of any of them (``Registry.add_lrp_kernels``; ``xplain_torch.lrp_kernels`` and
``xplain_paddle.lrp_kernels`` override most): fused passes over the largest activations, in-place
reuse of tensors that are handed over, gradient routes taken straight into a layer's input
without a forward graph. :mod:`xplain.testing.conformance` checks every override against the
reference, values and gradients, on every backend.

:func:`kernels_for` picks the kernels of a backend; inside :func:`reference_only` it gives the
reference alone (the benchmarks time both, so it is known what the overrides buy).
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Callable, Iterator, Mapping, Sequence

Tensor = Any

#: The kernels of :class:`LRPKernels`, by name.
KERNELS = ("scaled_leaky_relu", "damp_gradient", "replace_gradient", "stabilized_ratio",
           "signed_ratio", "floored_ratio", "gamma_ratios", "route_to_input", "tripwire")


class LRPKernels(Protocol):
    """What the LRP engine asks of a backend beyond :class:`~xplain.backend.Backend`.

    Arguments described as *handed over* belong to the kernel after the call: an override may
    reuse their storage, so the caller must not read them afterwards (the reference does not
    reuse them, which is also correct)."""

    def scaled_leaky_relu(self, x: Tensor, scale: Tensor | float, slope: float, /) -> Tensor:
        """``leaky_relu(x ⊙ scale, slope)``: ``x·scale`` where that is ``> 0``, ``slope·x·scale``
        elsewhere (``scale`` broadcasts against ``x``, e.g. one value per output channel of a
        weight), as one new tensor without gradient, in two passes over ``x``. LRP's parameter
        modifiers with a merged BatchNorm (``γ``, ``z⁺``: ``p ↦ α·p⁺ + β·p⁻``) are one such call
        on the layer's own weight, instead of four element-wise ops."""

    def damp_gradient(self, x: Tensor, eps: float,
                      on_absorbed: Callable[[Tensor], None] | None = None) -> Tensor:
        """A tensor with the value of ``x`` whose gradient is the incoming gradient ``g`` times
        ``|x| / (|x| + eps)`` (``eps > 0``), with ``x`` taken at the time of the call; in the
        backward pass ``on_absorbed`` (if given) receives ``eps · Σ g·x/(|x| + eps)`` per
        sample (shape ``(N,)``): the relevance the stabiliser absorbs, ``Σ x·g − Σ x·g̃``.

        The LRP-ε rule on a layer output ``x`` (Montavon et al. 2019, eq. 5), with its share
        of the conservation ledger. The same as ``scale_gradient(x, |x| / (|x| + eps))`` plus a
        gradient watch, but a backend may fuse it: one kept tensor ``x / (|x| + eps)`` (so a
        later in-place change of ``x`` needs no copy for the ledger) and an allocation-free
        backward, which matters on large activations. The result may differ from the unfused
        formula by a few float32 ulps of the gradient. The backward runs once."""

    def replace_gradient(self, value: Tensor, routes: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """A tensor with the value of ``value`` whose incoming gradient ``g`` flows to ``value``
        itself (when it requires one) and, as ``g * scale``, into each ``through`` of
        ``routes = [(through, scale), ...]`` (``through`` broadcastable-equal in shape to
        ``value``; ``scale`` a constant).

        The same as ``value + Σ scale_gradient(through − stop_gradient(through), scale)``
        (LRP's forward replacement: value exact, gradient the rule), which a backend may fuse
        into one product per route backward.

        ``value`` and the scales are handed over: where ``value`` needs no gradient the result
        may share its storage (a later in-place op on the result then changes ``value`` too),
        and the backward, which runs once, may overwrite the scales. Callers must not read
        either afterwards."""

    def stabilized_ratio(self, num: Tensor, den: Tensor, eps: float) -> Tensor:
        """``num / (|den| + eps)`` (``eps > 0``), shaped like ``den``.

        ``den`` is handed over: its storage may hold the result, so the caller must not read it
        afterwards (LRP passes a modified layer output, which is needed only for its gradient
        route). Saves the temporaries of three element-wise ops on the largest activations."""

    def signed_ratio(self, num: Tensor, den: Tensor, eps: float) -> Tensor:
        """``num / (den + eps·sign(den))`` (``eps > 0``), shaped like ``den``, where ``sign`` is
        ``den``'s sign bit (``+0`` counts as positive, ``−0`` as negative, so ``|den + eps·sign|``
        is at least ``eps`` everywhere): LRP's sign-preserving stabiliser for a denominator of
        either sign. ``den`` is only read (the pass rule's denominator is a layer input, which
        other layers may read too): one new tensor for the result, and no copy of ``den``."""

    def floored_ratio(self, num: Tensor, den: Tensor, floor: float | None) -> Tensor:
        """``num / max(den, floor)`` (``floor=None``: ``num / den``), shaped like ``den``.

        ``den`` is handed over as in :meth:`stabilized_ratio`. LRP folds the stabiliser ε into
        a denominator known to be ``>= 0`` (through the layer's bias): one pass instead of
        three."""

    def gamma_ratios(self, y: Tensor, q: Tensor, gamma: float, eps: float) -> tuple[Tensor, Tensor]:
        """``(u / D, y / D)`` with ``u = max(y, −(1+γ)·y)`` and ``D = u + q + eps``, for
        ``q ≥ 0``: the two gradient scales of LRP-γ on non-negative inputs (derivation in
        ``xplain.methods.lrp.emit.shared_gamma``). ``eps`` may be 0 where ``q`` already
        includes it (``q > 0``). ``q`` is handed over as in :meth:`stabilized_ratio`."""

    def route_to_input(self, value: Tensor, x: Tensor, routes: Sequence[tuple[Tensor, Tensor]],
                       conv: Mapping[str, Any] | None) -> Tensor:
        """A tensor with the value of ``value`` (which needs no gradient) whose incoming gradient
        ``g`` flows only into ``x``, as ``Σ_k W_kᵀ (s_k ⊙ g)`` for ``routes = [(W_k, s_k), ...]``.

        ``W_kᵀ`` is the input gradient (vector-Jacobian product) at ``x`` of the convolution
        with weight ``W_k`` and ``conv``'s ``stride``, ``padding`` and ``dilation`` (``groups``
        must be 1), or, with ``conv=None``, of the linear map ``x @ W_kᵀ`` (neutral layouts);
        ``s_k`` has ``value``'s shape. The same as
        ``replace_gradient(value, [(layer(x, W_k), s_k), ...])`` without those forwards and
        without a graph behind them: LRP's two-sided γ rule (``emit.shared_gamma``) routes both of
        its products straight into the layer input this way. ``value`` and the scales are
        handed over as in :meth:`replace_gradient`."""

    def tripwire(self, value: Tensor, anchor: Tensor, on_use: Callable[[], None]) -> Tensor:
        """A tensor with the value of ``value`` (it may share its storage; ``value`` needs no
        gradient) that autograd sees as computed from ``anchor``: its backward calls ``on_use()``
        and passes no gradient into ``anchor`` (zero, where the framework needs one). Any
        differentiable use of it shows up as a call, any other use as none; with an ``anchor``
        that needs no gradient it is ``value`` itself. LRP hands a tripwire of a layer output to
        everything but the ReLU after it, to prove that nothing else reads that output."""



class ReferenceKernels:
    """Every :class:`LRPKernels` operation in plain backend ops, as its docstring defines it.

    The oracle of the conformance checks, and what LRP runs on a backend without overrides."""

    def __init__(self, backend: Any) -> None:
        self.B = backend

    def scaled_leaky_relu(self, x: Tensor, scale: Tensor | float, slope: float, /) -> Tensor:
        B = self.B
        xs = B.stop_gradient(x) * scale
        return B.where(xs > 0, xs, xs * slope)

    def damp_gradient(self, x: Tensor, eps: float,
                      on_absorbed: Callable[[Tensor], None] | None = None) -> Tensor:
        B = self.B
        xs = B.stop_gradient(x)
        s = xs / (B.abs(xs) + eps)
        if on_absorbed is None or not B.requires_grad(x):
            return B.scale_gradient(x, B.abs(s))
        # a node of its own (also when x is a leaf), whose watch sees g before the scaling; a
        # copy, not a view: an in-place change of a view reroutes the gradient of its base
        # around the view's hooks
        y = x * 1.0
        B.watch_gradient(y, lambda g: on_absorbed(B.batch_dot(g, s) * eps))
        return B.scale_gradient(y, B.abs(s))

    def replace_gradient(self, value: Tensor, routes: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        B = self.B
        out = value
        for through, scale in routes:
            if B.requires_grad(through):
                out = out + B.scale_gradient(through - B.stop_gradient(through), B.stop_gradient(scale))
        return out

    def stabilized_ratio(self, num: Tensor, den: Tensor, eps: float) -> Tensor:
        return num / (self.B.abs(den) + eps)

    def signed_ratio(self, num: Tensor, den: Tensor, eps: float) -> Tensor:
        B = self.B
        negative = B.where(den == 0, 1.0 / den, den) < 0  # 1 / −0 = −inf: the sign bit of zeros
        return num / B.where(negative, den - eps, den + eps)

    def floored_ratio(self, num: Tensor, den: Tensor, floor: float | None) -> Tensor:
        return num / (den if floor is None else self.B.maximum(den, floor))

    def gamma_ratios(self, y: Tensor, q: Tensor, gamma: float, eps: float) -> tuple[Tensor, Tensor]:
        B = self.B
        y = B.stop_gradient(y)
        u = B.maximum(y, y * -(1.0 + gamma))
        d = u + B.stop_gradient(q) + eps
        return u / d, y / d

    def route_to_input(self, value: Tensor, x: Tensor, routes: Sequence[tuple[Tensor, Tensor]],
                       conv: Mapping[str, Any] | None) -> Tensor:
        B = self.B
        _check_ungrouped(conv)
        if not B.requires_grad(x):
            return value
        through = []
        for w, s in routes:  # the layer's forward with W_k, only for its gradient
            if conv is None:
                z = B.linear(x, B.stop_gradient(w))
            else:
                z = B.conv(x, B.stop_gradient(w), stride=conv["stride"], padding=conv["padding"],
                           dilation=conv["dilation"])
            through.append((z, s))
        return self.replace_gradient(B.stop_gradient(value), through)

    def tripwire(self, value: Tensor, anchor: Tensor, on_use: Callable[[], None]) -> Tensor:
        B = self.B
        if not B.requires_grad(anchor):
            return value
        # a scalar 0 computed from the anchor (its gradient into the anchor is exactly 0),
        # watched: a gradient reaches it only through a differentiable use of the result. No
        # custom function whose saved output would tie the graph into a cycle (paddle never
        # frees such a graph). The value is exact for a finite anchor.
        total = B.sum(anchor)
        link = (total - B.stop_gradient(total)) * 0.0
        B.watch_gradient(link, lambda _g: on_use())
        return B.stop_gradient(value) + link


class _Kernels:
    """The kernels LRP runs on one backend: each override where one is registered, else the
    reference (attributes bound once: no lookup per call)."""

    def __init__(self, backend: Any, overrides: Any | None) -> None:
        reference = ReferenceKernels(backend)
        self.overridden = tuple(k for k in KERNELS if overrides is not None and hasattr(overrides, k))
        for k in KERNELS:
            setattr(self, k, getattr(overrides if k in self.overridden else reference, k))


_REFERENCE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("xplain_lrp_reference_only",
                                                                        default=False)
_CACHE: dict[tuple[int, bool], tuple[Any, _Kernels]] = {}


def overrides_for(backend: Any) -> Any | None:
    """The registered kernel overrides of ``backend`` (loaded on first use), or ``None``."""
    from ...plugins import registry

    entry = registry().lrp_kernels.get(getattr(backend, "name", None))
    return None if entry is None else entry.load()


def kernels_for(backend: Any) -> LRPKernels:
    """The :class:`LRPKernels` of ``backend``: its registered overrides, the reference for the
    rest; only the reference inside :func:`reference_only`."""
    ref = _REFERENCE_ONLY.get()
    key = (id(backend), ref)
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not backend:
        hit = (backend, _Kernels(backend, None if ref else overrides_for(backend)))
        _CACHE[key] = hit
    return hit[1]


@contextmanager
def reference_only() -> Iterator[None]:
    """Within the block (this thread or task), LRP uses :class:`ReferenceKernels` only."""
    token = _REFERENCE_ONLY.set(True)
    try:
        yield
    finally:
        _REFERENCE_ONLY.reset(token)


# ---- helpers for backend overrides -------------------------------------------------------------
def take_scales(ctx: Any) -> tuple[Sequence[Tensor], bool]:
    """For backend overrides of :meth:`LRPKernels.replace_gradient` and
    :meth:`LRPKernels.route_to_input`: the scales kept on ``ctx.scales``, taken off it (they are
    handed over for one backward), and ``ctx.distinct``: whether the caller passed distinct
    tensors (only then may each be overwritten in place; see :func:`distinct`)."""
    scales, ctx.scales = ctx.scales, None
    if scales is None:
        raise RuntimeError("the backward of replace_gradient / route_to_input ran twice "
                           "(retain_graph=True); its scales were consumed by the first backward")
    return scales, ctx.distinct


def damping_hook(kept: Tensor, eps: float, on_absorbed: Callable[[Tensor], None] | None,
                 absorbed: Callable[[Tensor, Tensor], Tensor],
                 damped: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """For backend overrides of :meth:`LRPKernels.damp_gradient`: the gradient hook that hands
    ``on_absorbed`` the stabiliser's share ``absorbed(g, kept)`` (``ε Σ g·x/(|x|+ε)`` per
    sample) and returns ``damped(kept, g)`` (``g·|x|/(|x|+ε)``, written into ``kept``, which
    is consumed: a second backward is refused)."""
    used: list[bool] = []

    def hook(g: Tensor) -> Tensor:
        if used:
            raise RuntimeError("the backward of damp_gradient ran twice (retain_graph=True); "
                               "its kept tensor was consumed by the first backward")
        used.append(True)
        if on_absorbed is not None:
            on_absorbed(absorbed(g, kept))
        return damped(kept, g)

    return hook


def distinct(tensors: Sequence[Tensor]) -> bool:
    """Whether no tensor object occurs twice (checked on the caller's objects: detached copies
    are new objects even where they share storage)."""
    return len({id(t) for t in tensors}) == len(tensors)


@dataclass
class Routes:
    """For backend implementations of :meth:`LRPKernels.route_to_input`: its arguments, kept on
    the autograd node for the backward (weights and scales detached, see :func:`make_routes`)."""

    weights: tuple
    scales: list | None  # handed over: taken by the backward (see take_scales)
    distinct: bool
    conv: Mapping[str, Any] | None
    shape: tuple  # of x


def make_routes(x: Tensor, routes: Sequence[tuple[Tensor, Tensor]], conv: Mapping[str, Any] | None,
                detach: Callable[[Tensor], Tensor]) -> Routes:
    """The :class:`Routes` of a :meth:`LRPKernels.route_to_input` call (``detach`` of the backend)."""
    _check_ungrouped(conv)
    scales = [s for _, s in routes]
    return Routes(tuple(detach(w) for w, _ in routes), [detach(s) for s in scales], distinct(scales),
                  conv, tuple(x.shape))


def _check_ungrouped(conv: Mapping[str, Any] | None) -> None:
    if conv is not None and conv.get("groups", 1) != 1:
        raise ValueError("route_to_input needs an ungrouped convolution (groups=1)")


def sum_routes(routes: Routes, g: Tensor, input_gradient: Callable[[Tensor, Tensor], Tensor],
               multiply_: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """For backend implementations of :meth:`LRPKernels.route_to_input`: ``Σ_k
    input_gradient(W_k, s_k ⊙ g)`` over the routes (see :func:`take_scales`; ``multiply_(s, g)``
    multiplies in place), accumulated in place."""
    scales, unique = take_scales(routes)
    total = None
    for w, s in zip(routes.weights, scales):
        part = input_gradient(w, multiply_(s, g) if unique else s * g)
        total = part if total is None else total.add_(part)
    return total
