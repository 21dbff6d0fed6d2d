"""The PaddlePaddle implementation of :class:`xplain.backend.Backend`.

Same module shape as :mod:`xplain_torch.backend`. Paddle differences handled here, at the
boundary: ``Linear`` stores its weight as ``(in, out)`` (exchanged as ``(out, in)``), tensors
track ``stop_gradient`` instead of ``requires_grad``, hooks are "post" hooks.
"""
from __future__ import annotations

import builtins
import copy
import inspect
import itertools
import threading
from typing import Any
from collections.abc import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from xplain.checks import NO_INPUT_GRADIENT
from xplain.errors import ModelError
from xplain.backend import LayerInfo, activation_attrs, put_back_slots, replaced_slots

name = "paddle"

_DTYPES = {"float32": paddle.float32, "float64": paddle.float64, "float16": paddle.float16,
           "bfloat16": paddle.bfloat16, "int64": paddle.int64, "int32": paddle.int32,
           "bool": paddle.bool, "uint8": paddle.uint8}


# ---- detection ------------------------------------------------------------------------------
def is_tensor(obj: Any) -> bool:
    return isinstance(obj, paddle.Tensor)


def is_cpu(x) -> bool:
    return x.place.is_cpu_place()


def is_model(obj: Any) -> bool:
    return isinstance(obj, nn.Layer)


# ---- conversion -----------------------------------------------------------------------------
def asarray(obj: Any, *, like: paddle.Tensor, dtype: str | None = None) -> paddle.Tensor:
    if dtype is None:
        dt = like.dtype if like.is_floating_point() else paddle.float32
    else:
        dt = _DTYPES[dtype]
    if isinstance(obj, paddle.Tensor):
        out = obj.astype(dt)
        if str(out.place) != str(like.place):  # on like's device, as torch's .to(device=) does
            out = out._copy_to(like.place, True)
        return out
    return paddle.to_tensor(np.asarray(obj), dtype=dt, place=like.place)


def to_numpy(x: paddle.Tensor) -> np.ndarray:
    x = x.detach()
    if x.dtype == paddle.bfloat16:  # numpy has no bfloat16: widen (exactly) to float32
        x = x.astype(paddle.float32)
    return x.numpy()


def device(x: paddle.Tensor) -> str:
    return str(x.place)


def requires_grad(x: paddle.Tensor) -> bool:
    return not x.stop_gradient


def named_tensors(model) -> list[tuple[str, Any]]:
    return list(itertools.chain(model.named_parameters(), model.named_buffers()))


def named_parameters(model) -> list[tuple[str, Any]]:
    """Parameters without BatchNorm's running statistics (paddle stores them as parameters that
    take no gradient; torch as buffers)."""
    stats = {id(t) for layer in model.sublayers(include_self=True)
             if isinstance(layer, nn.layer.norm._BatchNormBase) for t in (layer._mean, layer._variance)}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in stats]


def gradients_unavailable(x: paddle.Tensor) -> str | None:
    return None


def hooks_unavailable(model: nn.Layer) -> str | None:
    from paddle.jit import TranslatedLayer
    from paddle.jit.dy2static.program_translator import StaticFunction

    if isinstance(model, TranslatedLayer):
        return ("the model was loaded with paddle.jit.load (a TranslatedLayer): it runs as a "
                "static program, so layer hooks never fire; load the dygraph model and its "
                "state dict instead")
    for name, m in model.named_sublayers(include_self=True):
        if isinstance(getattr(m, "forward", None), StaticFunction):
            where = "the model" if not name else f"its sub-layer {name!r}"
            return (f"{where} was converted with paddle.jit.to_static: it runs as a static "
                    f"program, so layer hooks never fire; pass the dygraph model (before "
                    f"to_static)")
    return None


#: Paddle's autograd is not thread-safe (two threads taking gradients at once can crash the
#: process, also with plain paddle.grad) and its grad mode is process-wide: every explanation
#: on this backend holds this lock.
_LOCK = threading.RLock()


def gradient_lock() -> threading.RLock:
    return _LOCK


def shape(x: paddle.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def version(x) -> int:
    return x._inplace_version()


def dtype_name(x: paddle.Tensor) -> str:
    return str(x.dtype).replace("paddle.", "")


def astype(x: paddle.Tensor, dtype: str) -> paddle.Tensor:
    return x.astype(_DTYPES[dtype])


# ---- array ops ------------------------------------------------------------------------------
def _axis(axis: Any) -> Any:
    return axis if axis is None or isinstance(axis, int) else list(axis)


def sum(x, /, *, axis=None, keepdims=False):  # noqa: A001 - array-API name
    return paddle.sum(x, axis=_axis(axis), keepdim=keepdims)


def mean(x, /, *, axis=None, keepdims=False):
    return paddle.mean(x, axis=_axis(axis), keepdim=keepdims)


def max(x, /, *, axis=None, keepdims=False):  # noqa: A001
    return paddle.amax(x, axis=_axis(axis), keepdim=keepdims)


def min(x, /, *, axis=None, keepdims=False):  # noqa: A001
    return paddle.amin(x, axis=_axis(axis), keepdim=keepdims)


def argmax(x, /, *, axis):
    return paddle.argmax(x, axis=axis)


def abs(x, /):  # noqa: A001
    return paddle.abs(x)


def sign(x, /):
    return paddle.sign(x)


def sqrt(x, /):
    return paddle.sqrt(x)


def exp(x, /):
    return paddle.exp(x)


def _like(y: Any, x: paddle.Tensor) -> paddle.Tensor:
    return y if isinstance(y, paddle.Tensor) else paddle.full_like(x, y)


def maximum(x, y, /):
    # a scalar bound: clip is one pass; maximum would first fill a tensor of x's shape
    return paddle.maximum(x, y) if isinstance(y, paddle.Tensor) else paddle.clip(x, min=float(y))


def minimum(x, y, /):
    return paddle.minimum(x, y) if isinstance(y, paddle.Tensor) else paddle.clip(x, max=float(y))


def where(cond, x, y, /):
    ref = x if isinstance(x, paddle.Tensor) else y
    if not isinstance(ref, paddle.Tensor):
        ref = paddle.zeros(cond.shape, dtype="float32")
    ref = paddle.broadcast_to(ref, paddle.broadcast_shape(ref.shape, cond.shape))
    return paddle.where(cond, _like(x, ref), _like(y, ref))


def clip(x, /, min=None, max=None):  # noqa: A002
    return paddle.clip(x, min=min, max=max)


def isfinite(x, /):
    return paddle.isfinite(x)


def all(x, /) -> bool:  # noqa: A001
    return bool(paddle.all(x))


def reshape(x, /, shape):
    return paddle.reshape(x, list(shape))


def permute_dims(x, /, axes):
    return paddle.transpose(x, list(axes))


def broadcast_to(x, /, shape):
    return paddle.broadcast_to(x, list(shape))


def concat(xs, /, *, axis=0):
    return paddle.concat(list(xs), axis=axis)


def stack(xs, /, *, axis=0):
    return paddle.stack(list(xs), axis=axis)


def zeros_like(x, /):
    return paddle.zeros_like(x)


def ones_like(x, /):
    return paddle.ones_like(x)


def matmul(x, y, /):
    return paddle.matmul(x, y)


def svd(x, /):
    return tuple(paddle.linalg.svd(x, full_matrices=False))


def take_along_axis(x, indices, /, *, axis):
    return paddle.take_along_axis(x, indices, axis=axis)


def relu(x, /):
    return F.relu(x)


def softmax(x, /, *, axis=-1):
    return F.softmax(x, axis=axis)


def interpolate(x, /, size, *, mode="bilinear"):
    kw = {"align_corners": False, "align_mode": 0} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    return F.interpolate(x, size=[int(s) for s in size], mode=mode, **kw)


# ---- autodiff -------------------------------------------------------------------------------
def grad(outputs, inputs, grad_outputs=None, *, retain_graph=False, create_graph=False, required=0):
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    gos = None if grad_outputs is None else (
        list(grad_outputs) if isinstance(grad_outputs, (list, tuple)) else [grad_outputs])
    gs = paddle.grad(outs, ins, gos, retain_graph=retain_graph or create_graph,
                     create_graph=create_graph, allow_unused=True)
    if any(g is None for g in gs[:required]):
        raise ModelError(NO_INPUT_GRADIENT)
    return [paddle.zeros_like(i) if g is None else g for g, i in zip(gs, ins)]


def with_grad(x):
    y = x.detach()
    y.stop_gradient = False
    return y


def stop_gradient(x):
    return x.detach()


def scale_gradient(x, scale):
    if x.stop_gradient:
        return x
    s = scale.detach()
    if x.is_leaf:  # a leaf's hook would also change what paddle.grad reports for it
        xs = x.detach()
        return xs + (x - xs) * s
    # A tensor hook costs no forward op; it scales the gradient at the tensor's value when the
    # hook is registered, also when an in-place op later changes the tensor.
    x.register_hook(lambda g: g * s)
    return x


def damp_gradient(x, eps):
    if x.stop_gradient:
        return x
    a = paddle.abs(x.detach())
    return scale_gradient(x, a / (a + eps))


def watch_gradient(x, fn):
    if not x.stop_gradient:
        x.register_hook(lambda g: fn(g))  # returns None: the gradient is unchanged
    return x


def alias(x):
    return x.view(x.shape)  # a view node: no copy, a gradient of its own


def batch_dot(x, y):
    n = x.shape[0]
    # row-wise dot of two (n, k) matrices: one pass over both, 3x faster on CPU than bmm's
    # batched (1, k) @ (k, 1) products
    return paddle.dot(x.reshape([n, -1]), y.reshape([n, -1]))


def custom_vjp(forward: Callable[..., paddle.Tensor], backward: Callable) -> Callable[..., paddle.Tensor]:
    class _Fn(paddle.autograd.PyLayer):
        @staticmethod
        def forward(ctx, *inputs):
            out = forward(*inputs)
            # the output detached: saved as itself it would hold this node, a cycle paddle
            # never frees (the whole graph leaked per call)
            ctx.save_for_backward(*inputs, out.detach())
            return out

        @staticmethod
        def backward(ctx, grad_output):
            *inputs, out = ctx.saved_tensor()
            grads = backward(tuple(inputs), out, grad_output)
            # PyLayer wants exactly one gradient per tensor input that requires one
            kept = [g for g, i in zip(grads, inputs) if not i.stop_gradient]
            return kept[0] if len(kept) == 1 else tuple(kept)

    return _Fn.apply


def enable_grad():
    return paddle.set_grad_enabled(True)


def no_grad():
    return paddle.no_grad()


# ---- layers & hooks -------------------------------------------------------------------------
_KINDS: list[tuple[tuple[type, ...], str]] = [
    ((nn.Conv1D, nn.Conv2D, nn.Conv3D), "conv"),
    ((nn.Linear,), "linear"),
    ((nn.LayerNorm,), "layernorm"),
    ((nn.MultiHeadAttention,), "attention"),
    ((nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.BatchNorm), "batchnorm"),
    ((nn.ReLU,), "relu"),
    ((nn.MaxPool1D, nn.MaxPool2D, nn.MaxPool3D), "maxpool"),
    ((nn.AvgPool1D, nn.AvgPool2D, nn.AvgPool3D), "avgpool"),
    ((nn.AdaptiveAvgPool1D, nn.AdaptiveAvgPool2D, nn.AdaptiveAvgPool3D), "adaptive_avgpool"),
    ((nn.AdaptiveMaxPool1D, nn.AdaptiveMaxPool2D, nn.AdaptiveMaxPool3D), "adaptive_maxpool"),
    ((nn.Flatten,), "flatten"),
    ((nn.Dropout, nn.Dropout2D, nn.Dropout3D, nn.AlphaDropout), "dropout"),
    ((nn.Identity,), "identity"),
]

#: Activation layers → the neutral function name of ``xplain.backend.ACTIVATIONS``.
_ACTIVATIONS: list[tuple[type, str]] = [
    (nn.ReLU6, "relu6"), (nn.Hardtanh, "hardtanh"), (nn.LeakyReLU, "leaky_relu"),
    (nn.PReLU, "prelu"), (nn.RReLU, "rrelu"), (nn.ELU, "elu"), (nn.SELU, "selu"), (nn.CELU, "celu"),
    (nn.GELU, "gelu"), (nn.Silu, "silu"), (nn.Swish, "silu"), (nn.Hardswish, "hardswish"),
    (nn.Mish, "mish"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.Softsign, "softsign"),
    (nn.Hardsigmoid, "hardsigmoid"), (nn.Softplus, "softplus"), (nn.LogSigmoid, "log_sigmoid"),
    (nn.Tanhshrink, "tanhshrink"), (nn.Softshrink, "softshrink"), (nn.Hardshrink, "hardshrink"),
    (nn.ThresholdedReLU, "threshold"), (nn.Softmax, "softmax"), (nn.Softmax2D, "softmax"),
    (nn.LogSoftmax, "log_softmax"), (nn.GLU, "glu"), (nn.Maxout, "maxout"),
]


def _activation_attrs(m: nn.Layer, function: str) -> dict[str, Any]:
    """``xplain.backend.activation_attrs`` of an activation layer (paddle's are never in place)."""
    return activation_attrs(
        function, softplus_beta=float(m._beta) if function == "softplus" else 1.0,
        clamp=(float(m._min), float(m._max)) if function == "hardtanh" else None,
        threshold=(float(m._threshold), float(getattr(m, "_value", 0.0)))
        if function == "threshold" else None)


def _tuple(v: Any, n: int) -> tuple:
    if isinstance(v, (tuple, list)):
        return tuple(int(i) for i in v)
    return (int(v),) * n


def _layer_info(lname: str, m: nn.Layer) -> LayerInfo:
    kind = next((k for types, k in _KINDS if isinstance(m, types)), None)
    function = next((f for t, f in _ACTIVATIONS if isinstance(m, t)), None)
    if function is not None:
        kind = "activation"
    has_children = bool(m._sub_layers)
    if kind is None and type(m).__name__ in _REORDERS and not m.parameters():
        kind = "reshape"
    cls, module = type(m).__name__, type(m).__module__
    ours = module.startswith("xplain_paddle.")
    if kind is None and cls in _WINDOW_ATTENTION and ours:
        kind = "window_attention"
    if kind is None and _packed_qkv_attr(m) is not None:
        kind = "packed_attention"
    if kind is None and (module.split(".")[0], cls) in _IDENTITY_IN_EVAL and not m.parameters():
        kind = "dropout"
    if kind is None:
        kind = "container" if has_children else "other"
    params: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if function is not None:
        attrs = _activation_attrs(m, function)
        params = dict(m.named_parameters(include_sublayers=False))
    if kind == "conv":
        nd = len(m.weight.shape) - 2
        pad = m._padding
        params = {"weight": m.weight, "bias": m.bias}
        attrs = {"ndim": nd, "stride": _tuple(m._stride, nd), "dilation": _tuple(m._dilation, nd),
                 "padding": pad.lower() if isinstance(pad, str) else _tuple(pad, nd),
                 "groups": int(m._groups), "padding_mode": m._padding_mode, "transposed": False}
    elif kind == "linear":
        params = {"weight": m.weight.T, "bias": m.bias}
    elif kind == "batchnorm":
        params = {"weight": m.weight, "bias": m.bias, "running_mean": m._mean,
                  "running_var": m._variance}
        attrs = {"eps": float(m._epsilon), "track_running_stats": True}
    elif kind in ("maxpool", "avgpool"):
        attrs = {"kernel_size": m.ksize, "stride": m.stride, "padding": m.padding}
    elif kind in ("adaptive_avgpool", "adaptive_maxpool"):
        # paddle's 1-D adaptive pools keep it as output_size, the 2-D and 3-D as _output_size
        attrs = {"output_size": getattr(m, "_output_size", getattr(m, "output_size", None))}
    elif kind == "relu":
        attrs = {"inplace": False}
    elif kind == "layernorm":
        params = {"weight": m.weight, "bias": m.bias}
        attrs = {"eps": float(m._epsilon), "axes": _norm_axes(m)}
    elif kind == "attention":
        params, attrs = _attention_info(m)
    elif kind == "window_attention":
        kind = "attention"
        params, attrs = _window_attention_info(m)
    elif kind == "packed_attention":
        kind = "attention"
        params = dict(m.named_parameters(include_sublayers=False))
        attrs = {"heads": int(getattr(m, "n_heads", getattr(m, "num_heads", 0))),
                 "packed_qkv": getattr(m, _packed_qkv_attr(m)), "unsupported": None, **_packed_output(m)}
    elif kind in ("other", "container"):  # a container's own parameters (attention, layer scale)
        params = dict(m.named_parameters(include_sublayers=False))
    return LayerInfo(lname, kind, type(m).__name__, m, params, attrs, has_children)


_MHA_SIGNATURE = inspect.signature(nn.MultiHeadAttention.forward)


def _attention_info(m: nn.MultiHeadAttention) -> tuple[dict, dict]:
    """``xplain.backend.ATTENTION_ATTRS`` of ``paddle.nn.MultiHeadAttention`` (inputs
    ``(N, L, E)``; ``attn_mask`` boolean/integer ``True``/non-zero = allowed, or additive)."""
    def weight(lin: nn.Linear) -> Any:
        return lin.weight.T

    params = {"q_weight": weight(m.q_proj), "k_weight": weight(m.k_proj), "v_weight": weight(m.v_proj),
              "q_bias": m.q_proj.bias, "k_bias": m.k_proj.bias, "v_bias": m.v_proj.bias,
              "out_weight": weight(m.out_proj), "out_bias": m.out_proj.bias}

    def read_call(args: tuple, kwargs: dict) -> tuple:
        bound = _MHA_SIGNATURE.bind(m, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["cache"] is not None:
            raise ModelError(f"{type(m).__name__} was called with a cache (incremental decoding), "
                             f"which LRP does not re-evaluate; call it without one")
        q = a["query"]
        k = q if a["key"] is None else a["key"]
        v = q if a["value"] is None else a["value"]
        mask = a["attn_mask"]
        if mask is not None:
            if mask.dtype in (paddle.bool, paddle.int32, paddle.int64, paddle.int8, paddle.uint8):
                mask = paddle.where(mask.astype(paddle.bool), paddle.zeros([], q.dtype),
                                    paddle.full([], float("-inf"), q.dtype))
            mask = mask.astype(q.dtype)
            while mask.ndim < 4:
                mask = mask.unsqueeze(0)
        return q, k, v, mask

    def write_output(output: Any, y: Any) -> Any:
        return (y,) + tuple(output[1:]) if isinstance(output, (tuple, list)) else y

    def write_call(args: tuple, kwargs: dict, q: Any, k: Any, v: Any) -> tuple[tuple, dict]:
        bound = _MHA_SIGNATURE.bind(m, *args, **kwargs)
        bound.arguments.update(query=q, key=k, value=v)
        return tuple(bound.args[1:]), dict(bound.kwargs)

    built_with = bool(m.need_weights)

    def weights_call(args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
        # the layer returns its softmax weights (N, heads, L, S) when its need_weights flag is
        # on (paddle has no per-call argument): on for this call, put back by split_weights,
        # and by weights_reset when the forward raised before
        m.need_weights = True
        return args, kwargs, built_with

    def split_weights(output: Any, asked: Any) -> tuple[Any, Any]:
        m.need_weights = asked
        out, weights, rest = output[0], output[1], tuple(output[2:])
        if asked:
            return weights, output
        return weights, (out, *rest) if rest else out

    def weights_reset() -> None:
        m.need_weights = built_with

    return params, {"heads": int(m.num_heads), "batch_first": True, "unsupported": None,
                    "read_call": read_call, "write_output": write_output, "write_call": write_call,
                    "weights_call": weights_call, "split_weights": split_weights,
                    "weights_reset": weights_reset, "projections": {"q": m.q_proj, "k": m.k_proj}}


#: Swin's window attention of xplain's paddle test zoo (``xplain_paddle.transformers``, the
#: layout and names of torchvision's), by class name.
_WINDOW_ATTENTION = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")

#: Attention layers that compute ``softmax(q·kᵀ·s + bias)·v`` with query, key and value from
#: one projection (``q | k | v`` on its output's last axis): (package, class name) → the
#: projection's attribute. xplain's paddle test zoo's MaxViT (torchvision's layout); PaddleClas's
#: ViT/DeiT ``Attention`` (``qkv`` reshaped to (B, N, 3, H, D), as timm's) and its Swin's
#: ``WindowAttention`` (the same, on windows its block partitions, plus a position bias and
#: the shift mask: LRP only, its weights are not read for rollouts).
_PACKED_ATTENTION = {("xplain_paddle", "RelativePositionalMultiHeadAttention"): "to_qkv",
                     ("ppcls", "Attention"): "qkv", ("ppcls", "WindowAttention"): "qkv"}

#: Parameter-free layers that are the identity in evaluation mode, by (package, class name):
#: PaddleClas's own ``Identity`` and its stochastic depth (``DropPath``).
_IDENTITY_IN_EVAL = {("ppcls", "Identity"), ("ppcls", "DropPath")}


def _packed_output(m: nn.Layer) -> dict[str, Any]:
    """``packed_scale``, ``out_weight``, ``out_bias`` of a packed attention layer: PaddleClas's
    ``softmax(q·kᵀ·scale)·v`` then ``proj``; MaxViT's and PaddleClas's Swin's add a position
    bias (``packed_scale`` ``None``: not re-evaluated)."""
    proj = getattr(m, "proj", None)
    if type(m).__module__.startswith("ppcls.") and type(m).__name__ == "Attention" \
            and isinstance(proj, nn.Linear):
        return {"packed_scale": float(m.scale), "out_weight": proj.weight.T, "out_bias": proj.bias}
    return {"packed_scale": None}


def _packed_qkv_attr(m: nn.Layer) -> str | None:
    attr = _PACKED_ATTENTION.get((type(m).__module__.split(".")[0], type(m).__name__))
    return attr if attr is not None and isinstance(getattr(m, attr, None), nn.Linear) else None


def _window_attention_info(m: nn.Layer) -> tuple[dict, dict]:
    """The neutral description of Swin's attention (``xplain.methods._attention.
    window_attention`` re-evaluates it); its input is ``(N, H, W, C)``."""
    cosine = type(m).__name__ == "ShiftedWindowAttentionV2"
    params = {"qkv_weight": m.qkv.weight.T, "qkv_bias": m.qkv.bias, "out_weight": m.proj.weight.T,
              "out_bias": m.proj.bias, "logit_scale": m.logit_scale if cosine else None}
    return params, {"heads": int(m.num_heads), "window_size": tuple(m.window_size),
                    "shift_size": tuple(m.shift_size), "cosine": cosine,
                    "relative_bias": m.get_relative_position_bias, "unsupported": None}


#: LayerNorm subclasses over the channels of an NCHW map, by class name (xplain's paddle
#: ConvNeXt, torchvision's spelling too); LRP checks the re-evaluation against the output.
_CHANNEL_NORMS = ("LayerNorm2D", "LayerNorm2d")

#: Parameter-free layers that only reorder axes, by class name (MaxViT's partitions too).
_REORDERS = ("Permute", "WindowPartition", "WindowDepartition", "SwapAxes")


def _norm_axes(m: nn.LayerNorm) -> tuple[int, ...]:
    return (1,) if type(m).__name__ in _CHANNEL_NORMS else tuple(range(-len(m._normalized_shape), 0))


def layers(model: nn.Layer) -> list[LayerInfo]:
    return [_layer_info(n, m) for n, m in model.named_sublayers(include_self=True)]


def add_forward_hook(layer: nn.Layer, hook, *, with_kwargs: bool = False):
    return layer.register_forward_post_hook(hook, with_kwargs=with_kwargs)


def add_forward_pre_hook(layer: nn.Layer, hook, *, with_kwargs: bool = False):
    return layer.register_forward_pre_hook(hook, with_kwargs=with_kwargs)


class _GradlessCalls:
    """The handle of :func:`add_gradless_calls`: removing it also restores the gradient mode
    when a call raised between the two hooks (paddle has no always-called post-hook)."""

    def __init__(self, handles: list, state: list[bool]) -> None:
        self.handles, self.state = handles, state

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        if self.state:
            paddle.set_grad_enabled(self.state[0])
            self.state.clear()


def add_gradless_calls(layer: nn.Layer) -> list:
    """Hooks that run ``layer``'s own forward without recording a graph (its output is replaced
    by a re-evaluation that carries the gradient): gradients off before the call, back on
    first thing after it (before the other post-hooks)."""
    state: list[bool] = []

    def pre(_m: nn.Layer, _inputs: tuple) -> None:
        state.append(paddle.is_grad_enabled())
        paddle.set_grad_enabled(False)

    def post(_m: nn.Layer, _inputs: tuple, _output: Any) -> None:
        paddle.set_grad_enabled(state.pop() if state else True)

    first = layer.register_forward_pre_hook(pre)
    last = layer.register_forward_post_hook(post)
    layer._forward_post_hooks.move_to_end(last._hook_id, last=False)
    return [_GradlessCalls([first, last], state)]


def call_layer(layer: nn.Layer, *inputs):
    return layer(*inputs)


# ---- functional layers ----------------------------------------------------------------------
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(x, weight, bias=None, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    pad = padding.upper() if isinstance(padding, str) else list(padding)
    out = _CONV[len(weight.shape) - 2](x, weight, None, stride=list(stride), padding=pad,
                                       dilation=list(dilation), groups=groups)
    if bias is None:
        return out
    if len(out.shape) == 4 and bias.stop_gradient:  # the fast path gives the bias no gradient
        return _add_channel_bias(out, bias)
    return out + bias.reshape([1, -1] + [1] * (len(out.shape) - 2))


def _bias_via_batchnorm(x, bias):
    """``x + bias`` per channel (axis 1), no gradient. Paddle's CPU broadcast add is slow (on
    8x256x56x56 float32: 85 ms, against 27 ms for the convolution itself); its inference-mode
    BatchNorm with unit scale, zero mean and unit variance adds the same bias, exactly, in
    15 ms."""
    c = x.shape[1]
    ones = paddle.ones([c], dtype=x.dtype)
    zeros = paddle.zeros([c], dtype=x.dtype)
    with paddle.no_grad():
        return F.batch_norm(x, zeros, ones, weight=ones, bias=bias, training=False, epsilon=0.0)


class _ChannelBias(paddle.autograd.PyLayer):
    """``x + bias`` for a constant ``bias``: the gradient into ``x`` is the incoming one, passed
    on without a BatchNorm gradient node."""

    @staticmethod
    def forward(ctx, x, bias):
        return _bias_via_batchnorm(x, bias)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _add_channel_bias(x, bias):
    return _bias_via_batchnorm(x, bias) if x.stop_gradient else _ChannelBias.apply(x, bias)


def linear(x, weight, bias=None):
    return F.linear(x, weight.T, bias)


# ---- model state ----------------------------------------------------------------------------
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_post_hooks")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _slots(m: nn.Layer) -> tuple[dict, dict, dict]:
    return m._parameters, m._buffers, m._sub_layers


def snapshot(model: nn.Layer, deep: bool = False) -> dict:
    mods = list(model.named_sublayers(include_self=True))
    named = list(model.named_parameters())
    buffers = list(model.named_buffers())
    return {
        "training": [(m, m.training) for _, m in mods],
        "stop_gradient": [(p, p.stop_gradient) for _, p in named],
        # which object sits where: a replaced parameter, buffer or sub-layer shows up here
        "slots": [(n, m, *map(dict, _slots(m))) for n, m in mods],
        "versions": [(n, t, t._inplace_version(), t.data_ptr()) for n, t in named if t.trainable],
        # buffers and non-trainable parameters (paddle keeps BatchNorm statistics as the latter)
        # are small: keep copies so they can be put back
        "buffers": [(b, b.numpy().copy()) for _, b in buffers]
                   + [(t, t.numpy().copy()) for _, t in named if not t.trainable],
        "hooks": [(m, {h: dict(getattr(m, h, {})) for h in _HOOK_DICTS}) for _, m in mods],
        # set_value() and edits of .numpy() views bump no version counter: a deep snapshot
        # keeps the values themselves
        "values": [(n, t, t.numpy().copy()) for n, t in named if t.trainable] if deep else None,
        "samples": None if deep else _samples([t for _, t in named if t.trainable]),
    }


def _samples(params: list) -> np.ndarray | None:
    """Sums of a strided sample (about 64 values) of each parameter: a shallow snapshot's net for
    ``set_value``, which bumps no version counter. Host tensors are read in place through their
    data pointer (no copy, no paddle op: 161 ops for ResNet-50 cost 25 ms); others by paddle ops
    with one host transfer."""
    if not params:
        return None
    if builtins.all(_host_readable(t) for t in params):
        return np.array([_host_sample(t).sum(dtype=np.float64) for t in params])
    with paddle.no_grad():
        parts = [paddle.sum(t.reshape([-1])[::(int(np.prod(t.shape)) // 64) or 1].astype("float64"))
                 for t in params]
        return paddle.stack(parts).numpy()


_TYPESTR = {"float32": "<f4", "float64": "<f8"}


def _host_readable(t: paddle.Tensor) -> bool:
    return t.place.is_cpu_place() and dtype_name(t) in _TYPESTR and t.is_contiguous()


class _Strided:
    """Exposes ``count`` elements, ``step`` apart, of host memory at ``ptr`` to numpy."""

    def __init__(self, ptr: int, count: int, step: int, typestr: str) -> None:
        size = int(typestr[-1])
        self.__array_interface__ = {"data": (ptr, True), "shape": (count,), "strides": (step * size,),
                                    "typestr": typestr, "version": 3}


def _host_sample(t: paddle.Tensor) -> np.ndarray:
    """Every ``n // 64``-th element of a contiguous host tensor, read in place (valid while ``t``
    lives; nothing is written)."""
    n = int(np.prod(t.shape))
    step = (n // 64) or 1
    return np.asarray(_Strided(t.data_ptr(), -(-n // step), step, _TYPESTR[dtype_name(t)]))


def restore(model: nn.Layer, snap: dict) -> None:
    put_back_slots(snap["slots"], _slots)
    for m, flag in snap["training"]:
        m.training = flag
    for p, flag in snap["stop_gradient"]:
        p.stop_gradient = flag
    for m, saved in snap["hooks"]:
        for h, before in saved.items():
            current = getattr(m, h, None)
            if current is None:
                continue
            for key in [k for k in current if k not in before]:
                del current[key]
    for b, saved in snap["buffers"] + [(t, v) for _, t, v in snap["values"] or ()]:
        if not _same_bits(b.numpy(), saved):
            b.set_value(saved)


def changed(model: nn.Layer, snap: dict) -> list[str]:
    """What differs from ``snap`` (call before :func:`restore` puts values back)."""
    out = replaced_slots(snap["slots"], _slots, ("parameter", "buffer", "sub-layer"))
    for n, t, version, ptr in snap["versions"]:
        if t._inplace_version() != version:
            out.append(f"{n} was modified in place")
        elif t.data_ptr() != ptr:
            out.append(f"{n} was given new storage")
    flagged = {s.split(" ")[0] for s in out}
    trainable = [(n, t) for n, t, _, _ in snap["versions"]]
    if snap["samples"] is not None:
        now = _samples([t for _, t in trainable])
        for (n, _), a, b in zip(trainable, snap["samples"], now):
            if n not in flagged and a.tobytes() != b.tobytes():
                out.append(f"{n} was modified (its values changed without an in-place op, e.g. "
                           f"through set_value)")
    for n, t, saved in snap["values"] or ():
        if n not in flagged and not _same_bits(t.numpy(), saved):
            out.append(f"{n} was modified (its values changed without an in-place op, e.g. "
                       f"through set_value)")
    return out


def copy_model(model: nn.Layer) -> nn.Layer:
    return copy.deepcopy(model)


def prepare(model: nn.Layer) -> None:
    model.eval()
    for p in model.parameters():
        p.stop_gradient = True


def forward(model: nn.Layer, x):
    if not paddle.is_grad_enabled():
        return model(x)
    # paddle 3.3's layer_norm backward returns a wrong input gradient whenever the weight is not
    # all ones (tests/test_backend_layers.py measures it against the formula): while xplain
    # differentiates, every LayerNorm's output carries the gradient of the same function built
    # from primitive ops. First among the hooks, so the ones xplain adds see the fixed output.
    handles = [m.register_forward_post_hook(_exact_layer_norm_gradient, prepend=True)
               for m in model.sublayers(include_self=True) if isinstance(m, nn.LayerNorm)]
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


def _exact_layer_norm_gradient(layer: nn.LayerNorm, inputs: tuple, output: Any) -> Any:
    x = inputs[0] if inputs else None
    if not isinstance(x, paddle.Tensor) or x.stop_gradient or not isinstance(output, paddle.Tensor):
        return None
    axes = [a % x.ndim for a in _norm_axes(layer)]
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    centred = x - x.mean(axis=axes, keepdim=True)
    y = centred / paddle.sqrt((centred * centred).mean(axis=axes, keepdim=True) + layer._epsilon)
    if layer.weight is not None:
        y = y * layer.weight.reshape(shape)
    if layer.bias is not None:
        y = y + layer.bias.reshape(shape)
    # a subclass may compute something else: checked against its output (float32 recomputed in
    # another order: ~1e-6; a different function: O(1)); the class itself is this formula, so
    # the hot path takes no comparison and no sync
    if type(layer) is not nn.LayerNorm and (y.shape != output.shape or not bool(
            paddle.allclose(y.detach(), output.detach(), rtol=1e-4, atol=1e-5))):
        return None  # its own gradient, not this one
    return output.detach() + (y - y.detach())
