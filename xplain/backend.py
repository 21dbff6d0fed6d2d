"""The Backend protocol: the only door between xplain's algorithms and a framework.

Every method in :mod:`xplain.methods` is written once against this interface. A backend
(``xplain_torch``, ``xplain_paddle``, or a third-party one) implements it with short functions
over its own tensors. Tensors of every supported framework already overload ``+ - * / **``,
comparisons and ``x[...]`` indexing, so the core uses operators directly and calls the backend
only for what operators cannot express.

Conventions (shared by all backends, checked by :mod:`xplain.testing.conformance`):

* Image tensors are ``NCHW``; attributions have the shape of the input.
* Array ops are named as in the Python array API (``sum(x, /, *, axis=None, keepdims=False)``).
* A linear layer's weight is exchanged in the neutral ``(out_features, in_features)`` layout;
  a conv weight as ``(out_channels, in_channels // groups, kh, kw)``. Backends whose framework
  stores another layout (Paddle's ``Linear`` keeps ``(in, out)``) convert at the boundary.
* ``grad`` never accumulates into parameters' ``.grad``; it returns gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from contextlib import AbstractContextManager as ContextManager
from typing import Any, Protocol, runtime_checkable
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Tensor = Any
"""A tensor of the backend's framework (``torch.Tensor``, ``paddle.Tensor`` ...)."""

Model = Any
"""A model of the backend's framework (``torch.nn.Module``, ``paddle.nn.Layer`` ...)."""

#: Layer kinds a backend reports in :class:`LayerInfo`. ``other`` means "not known to xplain";
#: methods that need to understand a layer (LRP) refuse ``other`` layers with parameters.
LAYER_KINDS = (
    "conv",  # 1-D/2-D/3-D convolution; attrs: stride, padding, dilation, groups, ndim
    "linear",  # fully connected; params: weight (out, in), bias
    "batchnorm",  # attrs: eps; params: weight, bias, running_mean, running_var
    "relu",
    "activation",  # any other activation; attrs: function (see ACTIVATIONS), inplace, at_zero, nonnegative
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "adaptive_maxpool",
    "flatten",
    "reshape",  # a layout change (torchvision's Permute): its gradient moves values back exactly
    "layernorm",  # attrs: eps, axes (the normalised axes of the layer's input: (-1,), or (1,) for
    #              channels of an NCHW map); params: weight, bias (shaped as those axes)
    "attention",  # multi-head attention, see ATTENTION_ATTRS
    "dropout",
    "identity",
    "container",  # Sequential / blocks / the root model: has children, computes via them
    "other",
)


#: What a backend reports for an ``"attention"`` layer: ``params`` ``q_weight``, ``k_weight``,
#: ``v_weight``, ``out_weight`` (neutral ``(out, in)``) and ``q_bias`` … ``out_bias`` (or ``None``);
#: ``attrs`` ``heads``, ``batch_first`` (inputs ``(N, L, E)``, else ``(L, N, E)``), ``unsupported``
#: (why the layer cannot be re-evaluated, or ``None``), ``read_call(args, kwargs)`` → ``(query,
#: key, value, mask)`` with ``mask`` additive (``-inf`` where attention is not allowed) and
#: broadcastable to ``(N, heads, L, S)``, or ``None``; ``write_output(output, y)`` → the layer's
#: output with the attention result ``y`` (``(N, L, E)`` or ``(L, N, E)`` as the inputs) in it;
#: ``write_call(args, kwargs, query, key, value)`` → ``(args, kwargs)`` of the same call with
#: those three inputs. Optional, where the framework's layer can return its per-head softmax weights itself:
#: ``weights_call(args, kwargs)`` → ``(args, kwargs, asked)`` asking it to, and
#: ``split_weights(output, asked)`` → ``(weights (N, heads, L, S), the output the caller asked
#: for)``, and ``weights_reset()`` where asking changes the layer (a flag), called after the pass
#: also when it raised; or ``projections`` ``{"q": layer, "k": layer}``, its query and key projections when
#: they are layers of their own (their outputs ``(N, L, E)`` give the weights without
#: recomputing them). A layer whose query, key and value come from one projection *module* (``q | k | v``
#: on its output's last axis) names it as ``packed_qkv`` instead of ``read_call``, with
#: ``packed_scale`` (the factor on ``q·kᵀ``, or ``None`` where it is not the standard
#: ``softmax(q·kᵀ·scale)·v``) and ``out_weight``/``out_bias`` (its output projection, torch's
#: ``(out, in)`` layout) for the attention maps that re-evaluate it; a layer that
#: must be re-evaluated (Swin) gives ``window_size`` and what ``xplain.methods._attention.
#: window_attention`` reads.
ATTENTION_ATTRS = ("heads", "batch_first", "unsupported", "read_call", "write_output", "write_call",
                   "weights_call", "split_weights", "weights_reset", "projections", "packed_qkv", "packed_scale",
                   "out_weight", "out_bias", "window_size")


#: Activation functions a backend names in ``LayerInfo.attrs["function"]`` of an
#: ``"activation"`` layer → whether it is element-wise (``y_i = f(x_i)``). The other attrs:
#: ``inplace`` (the module overwrites its input), ``at_zero`` (``f(0)`` as a float) and
#: ``nonnegative`` (``f(x) ≥ 0`` for every x). An activation layer a backend does not know is
#: ``"other"``.
ACTIVATIONS: dict[str, bool] = {
    **dict.fromkeys(("relu6", "hardtanh", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu",
                     "gelu", "silu", "hardswish", "mish", "sigmoid", "tanh", "softsign",
                     "hardsigmoid", "softplus", "log_sigmoid", "tanhshrink", "softshrink",
                     "hardshrink", "threshold"), True),
    **dict.fromkeys(("softmax", "log_softmax", "softmin", "glu", "maxout"), False),
}


def activation_attrs(function: str, *, inplace: bool = False, softplus_beta: float = 1.0,
                     clamp: tuple[float, float] | None = None,
                     threshold: tuple[float, float] | None = None) -> dict[str, Any]:
    """The ``attrs`` of an ``"activation"`` layer computing ``function`` (a key of
    :data:`ACTIVATIONS`): ``function``, ``inplace``, ``at_zero`` (f(0)) and ``nonnegative``
    (f ≥ 0 everywhere). Backends pass what only the layer object knows: Softplus' β,
    Hardtanh's ``(min, max)``, Threshold's ``(threshold, value)`` (``y = x if x > threshold else
    value``)."""
    at_zero = 0.0
    nonnegative = function in ("relu6", "sigmoid", "hardsigmoid", "softplus")
    if function in ("sigmoid", "hardsigmoid"):  # both frameworks' Hardsigmoid: x/6 + 1/2, clipped
        at_zero = 0.5
    elif function == "softplus":
        at_zero = math.log(2.0) / softplus_beta
    elif function == "log_sigmoid":
        at_zero = -math.log(2.0)
    elif function == "hardtanh" and clamp is not None:
        at_zero = sorted((clamp[0], 0.0, clamp[1]))[1]  # clamp(0, min, max)
        nonnegative = clamp[0] >= 0
    elif function == "threshold" and threshold is not None:
        at_zero = 0.0 if 0.0 > threshold[0] else threshold[1]
        nonnegative = threshold[0] >= 0 and threshold[1] >= 0
    return {"function": function, "inplace": inplace, "at_zero": at_zero, "nonnegative": nonnegative}


@dataclass
class LayerInfo:
    """A framework-neutral description of one layer (sub-module) of a model.

    Attributes:
        name: dotted path from the root, as ``model.named_modules()`` spells it (``""`` = root).
        kind: one of :data:`LAYER_KINDS`.
        type_name: the framework class name (``"Conv2d"``, ``"Conv2D"`` ...), for messages.
        module: the framework layer object itself (borrowed; never modified by the core).
        params: parameters/buffers in neutral layout (see module docstring), as backend tensors.
        attrs: hyper-parameters (``stride``, ``padding``, ``dilation``, ``groups``, ``eps`` ...),
            spatial ones as tuples of ints.
        has_children: whether the layer contains sub-layers.
    """

    name: str
    kind: str
    type_name: str
    module: Any
    params: dict[str, Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    has_children: bool = False


class HookHandle(Protocol):
    """What ``add_forward_hook`` returns; ``remove()`` detaches the hook."""

    def remove(self) -> None: ...


#: ``hook(layer, inputs, output)``; returning a tensor replaces the layer's output.
ForwardHook = Callable[[Any, tuple, Tensor], "Tensor | None"]


@runtime_checkable
class Backend(Protocol):
    """Tensor ops, autodiff and layer access of one framework.

    A backend is a stateless object (a module or an instance); the core obtains it with
    :func:`xplain.backends.backend_for`. Methods below are grouped as: detection, conversion,
    array ops, autodiff, layers & hooks, functional layers, model state.
    """

    name: str

    # ---- detection -------------------------------------------------------------------------
    def is_tensor(self, obj: Any) -> bool:
        """True if ``obj`` is a tensor of this framework."""

    def is_cpu(self, x: Tensor) -> bool:
        """Whether ``x`` lives in host memory (chunk sizes follow the CPU allocator there)."""

    def is_model(self, obj: Any) -> bool:
        """True if ``obj`` is a model/layer of this framework."""

    # ---- conversion ------------------------------------------------------------------------
    def asarray(self, obj: Any, *, like: Tensor, dtype: str | None = None) -> Tensor:
        """A tensor from numpy/scalars/tensor on ``like``'s device, with ``like``'s dtype
        (floats) or ``dtype`` (``"float32"``, ``"int64"``, ``"bool"``)."""

    def to_numpy(self, x: Tensor) -> np.ndarray:
        """A numpy copy of ``x`` (detached, on the host)."""

    def shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape as a tuple of Python ints."""

    def version(self, x: Tensor) -> int:
        """A counter that changes whenever ``x`` is modified in place (``x.add_(...)``)."""

    def dtype_name(self, x: Tensor) -> str:
        """The dtype as a numpy-style name: ``"float32"``, ``"int64"``, ``"bool"`` ..."""

    def device(self, x: Tensor) -> str:
        """Where ``x`` lives, as a string that compares equal for tensors on one device
        (``"cpu"``, ``"cuda:0"``, ``"meta"``; paddle: ``"Place(cpu)"`` ...)."""

    def requires_grad(self, x: Tensor) -> bool:
        """Whether autograd records operations on ``x`` (torch ``requires_grad``, paddle
        ``not stop_gradient``)."""

    def astype(self, x: Tensor, dtype: str) -> Tensor:
        """``x`` converted to the numpy-style dtype name ``dtype``."""

    # ---- array ops (array-API names) --------------------------------------------------------
    def sum(self, x: Tensor, /, *, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor: ...
    def mean(self, x: Tensor, /, *, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor: ...
    def max(self, x: Tensor, /, *, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor: ...
    def min(self, x: Tensor, /, *, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor: ...
    def argmax(self, x: Tensor, /, *, axis: int) -> Tensor: ...
    def abs(self, x: Tensor, /) -> Tensor: ...
    def sign(self, x: Tensor, /) -> Tensor: ...
    def sqrt(self, x: Tensor, /) -> Tensor: ...
    def exp(self, x: Tensor, /) -> Tensor: ...
    def maximum(self, x: Tensor, y: Tensor | float, /) -> Tensor: ...
    def minimum(self, x: Tensor, y: Tensor | float, /) -> Tensor: ...
    def where(self, cond: Tensor, x: Tensor | float, y: Tensor | float, /) -> Tensor: ...
    def clip(self, x: Tensor, /, min: float | None = None, max: float | None = None) -> Tensor: ...
    def isfinite(self, x: Tensor, /) -> Tensor: ...
    def all(self, x: Tensor, /) -> bool:
        """A Python bool: every element true (a host sync, used only for validation)."""
    def reshape(self, x: Tensor, /, shape: Sequence[int]) -> Tensor: ...
    def permute_dims(self, x: Tensor, /, axes: Sequence[int]) -> Tensor: ...
    def broadcast_to(self, x: Tensor, /, shape: Sequence[int]) -> Tensor: ...
    def concat(self, xs: Sequence[Tensor], /, *, axis: int = 0) -> Tensor: ...
    def stack(self, xs: Sequence[Tensor], /, *, axis: int = 0) -> Tensor: ...
    def zeros_like(self, x: Tensor, /) -> Tensor: ...
    def ones_like(self, x: Tensor, /) -> Tensor: ...
    def matmul(self, x: Tensor, y: Tensor, /) -> Tensor: ...
    def svd(self, x: Tensor, /) -> tuple[Tensor, Tensor, Tensor]:
        """Reduced singular value decomposition of a (batch of) matrix ``(..., M, N)``, as
        ``linalg.svd(x, full_matrices=False)``: ``(U, S, Vh)`` with ``x = U @ diag(S) @ Vh``,
        ``S`` descending. Signs of singular vectors are arbitrary (callers fix them)."""
    def take_along_axis(self, x: Tensor, indices: Tensor, /, *, axis: int) -> Tensor: ...
    def relu(self, x: Tensor, /) -> Tensor: ...
    def softmax(self, x: Tensor, /, *, axis: int = -1) -> Tensor: ...
    def interpolate(self, x: Tensor, /, size: Sequence[int], *, mode: str = "bilinear") -> Tensor:
        """Resize the trailing spatial dims of an ``NC...`` tensor (``align_corners=False``)."""

    # ---- autodiff ---------------------------------------------------------------------------
    def grad(self, outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
             grad_outputs: Tensor | Sequence[Tensor] | None = None, *,
             retain_graph: bool = False, create_graph: bool = False, required: int = 0) -> list[Tensor]:
        """d(outputs)/d(inputs) contracted with ``grad_outputs`` (ones if None), one per input.
        Inputs that do not influence the outputs get zeros, never None — except the first
        ``required`` ones, for which that raises :class:`~xplain.errors.ModelError` with
        :data:`xplain.checks.NO_INPUT_GRADIENT` (a model input the gradient never reaches: a
        zero map there would be silently wrong)."""

    def with_grad(self, x: Tensor) -> Tensor:
        """A new leaf tensor equal to ``x`` that records gradients."""

    def stop_gradient(self, x: Tensor) -> Tensor:
        """``x`` cut from the graph (same values, zero gradient)."""

    def scale_gradient(self, x: Tensor, scale: Tensor) -> Tensor:
        """A tensor with the value of ``x`` whose gradient is the incoming gradient times
        ``scale`` (a constant, broadcastable to ``x``: no gradient flows into it).

        May return ``x`` itself with a gradient hook, so it costs no element-wise op forward. The
        scaling applies to the gradient at ``x``'s value *at the time of the call*: an in-place op
        applied to the result later (an in-place ReLU) is differentiated as usual, and the
        gradient it passes back to ``x`` is then scaled. Used by LRP-ε (gradient times
        ``|y| / (|y| + ε)``)."""

    def watch_gradient(self, x: Tensor, fn: Callable[[Tensor], None]) -> Tensor:
        """``x`` itself; in a backward pass through ``x``, ``fn(g)`` is called with the gradient
        arriving at ``x`` (hooks registered on ``x`` earlier have already applied), and the
        gradient is left unchanged. LRP's conservation ledger reads relevance this way."""

    def batch_dot(self, x: Tensor, y: Tensor) -> Tensor:
        """``Σ x·y`` over every axis but the first, shape ``(N,)``, for ``x`` and ``y`` of one
        shape: without a full-size temporary where the framework allows (a batched matrix
        product), which matters for LRP's ledger on every layer output."""

    def alias(self, x: Tensor) -> Tensor:
        """A tensor with the values of ``x`` and a graph node of its own, so the gradient that
        reaches the alias is the gradient of its uses only (no copy where the framework allows
        a view)."""

    def custom_vjp(self, forward: Callable[..., Tensor],
                   backward: Callable[[tuple, Tensor, Tensor], tuple]) -> Callable[..., Tensor]:
        """A differentiable function with a hand-written vector-Jacobian product.

        ``forward(*inputs) -> output``; ``backward(inputs, output, grad_output) -> grads``
        (one per input, ``None`` for inputs that need none). Used by guided backprop/deconvnet.
        """

    def enable_grad(self) -> ContextManager:
        """Context in which graphs are recorded, even inside a user's ``no_grad``."""

    def no_grad(self) -> ContextManager:
        """Context in which no graph is recorded (cheap forwards: targets, occlusion ...)."""

    def gradients_unavailable(self, x: Tensor) -> str | None:
        """Why no gradient can be taken of a computation on ``x`` in the calling context (torch:
        ``inference_mode``), as a message naming the fix; ``None`` when gradients work."""

    def gradient_lock(self) -> ContextManager:
        """Held around every explanation on this backend: a process-wide lock where the
        framework's autodiff is not thread-safe (paddle), a no-op context otherwise (torch)."""

    # ---- layers & hooks ---------------------------------------------------------------------
    def hooks_unavailable(self, model: Model) -> str | None:
        """Why layer hooks would not fire in ``model`` (a compiled, scripted, traced or static
        graph model, or one holding such a sub-module), naming the fix; ``None`` when they fire."""

    def layers(self, model: Model) -> list[LayerInfo]:
        """Every sub-layer (root first, then depth-first in registration order)."""

    def add_forward_hook(self, layer: Any, hook: ForwardHook, *, with_kwargs: bool = False) -> HookHandle:
        """Run ``hook(layer, inputs, output)`` after each call of ``layer``; a returned tensor
        replaces the output. ``with_kwargs``: ``hook(layer, inputs, kwargs, output)``."""

    def add_forward_pre_hook(self, layer: Any, hook: Callable[..., "tuple | None"], *,
                             with_kwargs: bool = False) -> HookHandle:
        """Run ``hook(layer, inputs)`` before each call; a returned tuple replaces the inputs.
        ``with_kwargs``: ``hook(layer, inputs, kwargs)``, returning ``(inputs, kwargs)`` or
        ``None``."""

    def call_layer(self, layer: Any, *inputs: Tensor) -> Tensor:
        """Call one layer as the model would."""

    # ---- functional layers ------------------------------------------------------------------
    def conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
             stride: Sequence[int] = (1, 1), padding: Sequence[int] | str = (0, 0),
             dilation: Sequence[int] = (1, 1), groups: int = 1) -> Tensor:
        """N-d convolution (N from ``weight``'s rank) with explicit weights (neutral layout)."""

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x @ weight.T + bias`` with ``weight`` in ``(out, in)`` layout."""

    # ---- model state (the borrowed-model guard) ---------------------------------------------
    def named_tensors(self, model: Model) -> list[tuple[str, Tensor]]:
        """Every parameter and buffer of ``model`` with its state-dict name."""

    def named_parameters(self, model: Model) -> list[tuple[str, Tensor]]:
        """Every parameter of ``model`` (not buffers), each once, with its dotted name."""

    def snapshot(self, model: Model, deep: bool = False) -> Any:
        """Record of what a method may touch: train/eval flags, gradient flags, hooks, which
        object sits in every parameter/buffer/sub-layer slot, storage pointers and in-place
        version counters of parameters, buffer values; with ``deep`` also a copy of every
        parameter's values (for code xplain has not seen: see ``xplain.guard``)."""

    def restore(self, model: Model, snapshot: Any) -> None:
        """Put back flags, slots, storage, buffer values (and with a deep snapshot parameter
        values), and remove hooks added since ``snapshot``."""

    def changed(self, model: Model, snapshot: Any) -> list[str]:
        """Human-readable list of what differs from ``snapshot`` (empty when identical); called
        before :meth:`restore`."""

    def copy_model(self, model: Model) -> Model:
        """An independent deep copy of ``model`` (the guard diagnoses on it, never on the
        user's model)."""

    def prepare(self, model: Model) -> None:
        """Put the model in the state methods run it in: eval mode, parameters frozen."""

    def forward(self, model: Model, x: Tensor) -> Tensor:
        """``model(x)``."""


def iter_chunks(total: int, size: int) -> Iterator[slice]:
    """Slices ``[0:size], [size:2*size] ...`` covering ``range(total)``."""
    size = max(1, int(size))
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def replaced_slots(slots: Sequence[tuple], current: Callable[[Any], Sequence[dict]],
                   kinds: Sequence[str]) -> list[str]:
    """For backend implementations of :meth:`Backend.changed`: which parameter / buffer /
    sub-layer slot now holds another object than recorded. ``slots`` holds ``(name, module,
    *saved dicts)`` records, ``current(module)`` the module's live dicts in the same order."""
    out = []
    for name, module, *saved in slots:
        for what, slot, before in zip(kinds, current(module), saved):
            for key in set(slot) | set(before):
                if slot.get(key) is not before.get(key):
                    out.append(f"{what} {name + '.' if name else ''}{key} was replaced")
    return out


def put_back_slots(slots: Sequence[tuple], current: Callable[[Any], Sequence[dict]]) -> None:
    """For backend implementations of :meth:`Backend.restore`: the recorded objects back into
    every slot that changed (see :func:`replaced_slots`)."""
    for _, module, *saved in slots:
        for slot, before in zip(current(module), saved):
            if slot.keys() != before.keys() or any(slot[k] is not v for k, v in before.items()):
                slot.clear()
                slot.update(before)
