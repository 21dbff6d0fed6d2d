"""PyTorch's fused LRP kernels (:mod:`xplain.methods.lrp.kernels`): each computes what the
reference implementation in plain backend ops computes, in fewer passes over the largest
activations or without a forward graph. ``xplain.testing.conformance`` checks every one against
the reference. Registered by :mod:`xplain_torch.plugin`; imported with the backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xplain.methods.lrp.kernels import damping_hook, distinct, make_routes, sum_routes, take_scales

from .backend import batch_dot

_CONV_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def scaled_leaky_relu(x, scale, slope, /):
    with torch.no_grad():
        out = x * scale
        return out if slope == 1.0 else F.leaky_relu_(out, slope)  # out is new: in place


def damp_gradient(x, eps, on_absorbed=None):
    if not x.requires_grad:
        return x
    xd = x.detach()
    s = torch.abs(xd).add_(eps)
    torch.div(xd, s, out=s)  # x/(|x|+ε), signed: the one tensor kept
    if x.is_leaf:  # a leaf's hook would also change what autograd.grad reports for it
        x = x.view_as(x)
    # ε Σ g·x/(|x|+ε) as a reduction, no temporary; g·|x|/(|x|+ε) in the kept tensor
    x.register_hook(damping_hook(s, eps, on_absorbed, lambda g, k: batch_dot(g, k).mul_(eps),
                                 lambda k, g: k.abs_().mul_(g)))
    return x


class _Replace(torch.autograd.Function):
    """Value of the first input, gradient times each scale into the routed tensors.

    A ``value`` that needs no gradient is returned *as itself* (marked dirty, so autograd
    records this node as its producer and a later in-place ReLU is differentiated as usual):
    no copy of the largest activations. The backward multiplies the scales in place; they
    were handed over for this one backward."""

    @staticmethod
    def forward(ctx, value, scales, unique, *throughs):
        # constants: kept as attributes, no saved-tensor version checks
        ctx.scales, ctx.distinct = scales, unique
        if ctx.needs_input_grad[0] or value._is_view():
            return value.clone()  # a view of / a leaf needing grad cannot be marked dirty
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, g):
        scales, distinct = take_scales(ctx)
        return ((g if ctx.needs_input_grad[0] else None), None, None,
                *((s.mul_(g) if distinct and s.shape == g.shape else g * s) if need else None
                  for s, need in zip(scales, ctx.needs_input_grad[3:])))


def replace_gradient(value, routes):
    routes = [(t, s) for t, s in routes if t.requires_grad]
    if not routes:
        return value
    return _Replace.apply(value, tuple(s.detach() for _, s in routes), distinct([s for _, s in routes]),
                          *(t for t, _ in routes))


def _divide_into(num, d):
    """``num / d``, written into ``d`` (handed over) where the shapes and dtypes allow."""
    if d.shape != torch.broadcast_shapes(num.shape, d.shape) or d.dtype != num.dtype:
        return num / d
    return torch.div(num, d, out=d)


def stabilized_ratio(num, den, eps):
    return _divide_into(num, den.detach().abs_().add_(eps))  # den is handed over


def signed_ratio(num, den, eps):
    d = den.detach()
    out = torch.abs(d).add_(eps).copysign_(d)  # den only read: the result's one new tensor
    return _divide_into(num, out)


def floored_ratio(num, den, floor):
    d = den.detach()  # handed over: its storage holds the result
    return _divide_into(num, d if floor is None else d.clamp_min_(floor))


def gamma_ratios(y, q, gamma, eps):
    y = y.detach()
    u = F.leaky_relu(y, -(1.0 + gamma))  # max(y, −(1+γ)y) in one pass
    d = q.detach().add_(u)  # q is handed over
    if eps:
        d.add_(eps)
    return u.div_(d), torch.div(y, d, out=d)


_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input,
               3: torch.nn.grad.conv3d_input}


def _input_gradient(shape, weight, g, conv):
    """The gradient at an input of ``shape`` of ``layer(x, weight)`` at output gradient ``g``
    (``conv`` attrs, or None for linear)."""
    if conv is None:
        return g @ weight
    stride, padding, dilation = tuple(conv["stride"]), conv["padding"], tuple(conv["dilation"])
    if isinstance(padding, str):  # no explicit amounts: differentiate the forward instead
        with torch.enable_grad():
            x = torch.zeros(shape, dtype=g.dtype, device=g.device, requires_grad=True)
            y = _CONV_FORWARD[weight.ndim - 2](x, weight, None, stride=stride, padding=padding,
                                      dilation=dilation)
            return torch.autograd.grad(y, x, g)[0]
    if set(weight.shape[2:]) == {1} and set(padding) == {0}:
        # a matrix product: 2-6x faster than oneDNN's 1x1 input gradient on CPU (ResNet-50,
        # 64 <- 256 channels at 56x56: 12 ms against 2 ms); a stride scatters it (see
        # _pointwise_strided)
        n, c_out, *spatial = g.shape
        part = torch.matmul(weight.reshape(c_out, -1).t(), g.reshape(n, c_out, -1))
        part = part.reshape(n, weight.shape[1], *spatial)
        if set(stride) == {1}:
            return part
        full = torch.zeros(shape, dtype=g.dtype, device=g.device)
        full[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = part
        return full
    return _CONV_INPUT[weight.ndim - 2](shape, weight, g, stride=stride, padding=tuple(padding),
                                        dilation=dilation)


class _RouteToInput(torch.autograd.Function):
    """Value of the first input; gradient ``Σ_k W_kᵀ(s_k ⊙ g)`` into ``x``, without a forward
    graph (see LRPKernels.route_to_input)."""

    @staticmethod
    def forward(ctx, value, x, routes):
        ctx.routes = routes
        if value._is_view():
            return value.clone()
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, g):
        r = ctx.routes
        return None, sum_routes(r, g, lambda w, s: _input_gradient(r.shape, w, s, r.conv), torch.Tensor.mul_), None


def route_to_input(value, x, routes, conv):
    if not x.requires_grad:
        return value
    return _RouteToInput.apply(value.detach(), x,
                               make_routes(x, routes, conv, torch.Tensor.detach))


class _Tripwire(torch.autograd.Function):
    """Value of ``value`` (an alias, no copy), computed from ``anchor`` as far as autograd
    knows; the backward reports that it ran."""

    @staticmethod
    def forward(ctx, value, anchor, on_use):
        ctx.on_use = on_use
        return value.detach()

    @staticmethod
    def backward(ctx, g):
        ctx.on_use()
        return None, None, None


def tripwire(value, anchor, on_use):
    return _Tripwire.apply(value, anchor, on_use) if anchor.requires_grad else value
