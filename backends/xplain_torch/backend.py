"""The PyTorch implementation of :class:`xplain.backend.Backend`.

Short functions only: each forwards an array-API-named op to torch. Imported only when a torch
model or tensor is first seen (see :mod:`xplain_torch.plugin`).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xplain.checks import NO_INPUT_GRADIENT
from xplain.errors import ModelError
from xplain.backend import LayerInfo, activation_attrs, put_back_slots, replaced_slots

name = "torch"

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
           "bool": torch.bool, "uint8": torch.uint8}


# ---- detection ------------------------------------------------------------------------------
def is_tensor(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor)


def is_cpu(x) -> bool:
    return x.device.type == "cpu"


def is_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module)


# ---- conversion -----------------------------------------------------------------------------
def asarray(obj: Any, *, like: torch.Tensor, dtype: str | None = None) -> torch.Tensor:
    if dtype is None:
        dt = like.dtype if like.dtype.is_floating_point else torch.float32
    else:
        dt = _DTYPES[dtype]
    if isinstance(obj, torch.Tensor):
        return obj.to(device=like.device, dtype=dt)
    return torch.as_tensor(np.asarray(obj), dtype=dt, device=like.device)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach()
    if x.dtype == torch.bfloat16:  # numpy has no bfloat16: widen (exactly) to float32
        x = x.float()
    return x.cpu().numpy()


def device(x: torch.Tensor) -> str:
    return str(x.device)


def requires_grad(x: torch.Tensor) -> bool:
    return bool(x.requires_grad)


def named_tensors(model) -> list[tuple[str, Any]]:
    return list(itertools.chain(model.named_parameters(), model.named_buffers()))


def named_parameters(model) -> list[tuple[str, Any]]:
    return list(model.named_parameters())


def gradients_unavailable(x: torch.Tensor) -> str | None:
    if torch.is_inference_mode_enabled():
        return ("explain() was called inside torch.inference_mode(), where no gradient can be "
                "taken; call it outside that block (xplain runs its own no-grad passes)")
    if x.is_inference():
        return ("the inputs were created under torch.inference_mode() and cannot take part in "
                "gradients; create them outside it, or pass x.clone() made outside the block")
    return None


def hooks_unavailable(model: nn.Module) -> str | None:
    if isinstance(model, torch.jit.ScriptModule):
        return (f"the model is a TorchScript module ({type(model).__name__}, from torch.jit.script "
                f"or torch.jit.trace): its layers run as compiled code, so layer hooks never fire")
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        return ("the model was compiled with torch.compile; pass the eager module "
                "(model._orig_mod) to explain it")
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            return (f"its sub-module {name!r} is a TorchScript module ({type(m).__name__}): layer "
                    f"hooks never fire inside it")
    return None


_LOCK = contextlib.nullcontext()


def gradient_lock() -> contextlib.AbstractContextManager:
    # torch's autograd is thread-safe and its grad mode is thread-local: nothing to serialise
    return _LOCK


def shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def version(x) -> int:
    return x._version


def dtype_name(x: torch.Tensor) -> str:
    return str(x.dtype).replace("torch.", "")


def astype(x: torch.Tensor, dtype: str) -> torch.Tensor:
    return x.to(_DTYPES[dtype])


# ---- array ops ------------------------------------------------------------------------------
def _axis(axis: int | tuple[int, ...] | None) -> Any:
    return axis if axis is None or isinstance(axis, int) else tuple(axis)


def sum(x, /, *, axis=None, keepdims=False):  # noqa: A001 - array-API name
    return x.sum() if axis is None and not keepdims else x.sum(dim=_axis(axis) if axis is not None else tuple(range(x.ndim)), keepdim=keepdims)


def mean(x, /, *, axis=None, keepdims=False):
    return x.mean() if axis is None and not keepdims else x.mean(dim=_axis(axis) if axis is not None else tuple(range(x.ndim)), keepdim=keepdims)


def max(x, /, *, axis=None, keepdims=False):  # noqa: A001
    return x.amax() if axis is None and not keepdims else x.amax(dim=_axis(axis) if axis is not None else tuple(range(x.ndim)), keepdim=keepdims)


def min(x, /, *, axis=None, keepdims=False):  # noqa: A001
    return x.amin() if axis is None and not keepdims else x.amin(dim=_axis(axis) if axis is not None else tuple(range(x.ndim)), keepdim=keepdims)


def argmax(x, /, *, axis):
    return x.argmax(dim=axis)


def abs(x, /):  # noqa: A001
    return x.abs()


def sign(x, /):
    return x.sign()


def sqrt(x, /):
    return x.sqrt()


def exp(x, /):
    return x.exp()


def _like(y: Any, x: torch.Tensor) -> torch.Tensor:
    return y if isinstance(y, torch.Tensor) else torch.tensor(y, dtype=x.dtype, device=x.device)


def maximum(x, y, /):
    return torch.maximum(x, _like(y, x))


def minimum(x, y, /):
    return torch.minimum(x, _like(y, x))


def where(cond, x, y, /):
    ref = x if isinstance(x, torch.Tensor) else y
    return torch.where(cond, _like(x, ref), _like(y, ref))


def clip(x, /, min=None, max=None):  # noqa: A002
    return x.clamp(min=min, max=max)


def isfinite(x, /):
    return torch.isfinite(x)


def all(x, /) -> bool:  # noqa: A001
    return bool(x.all())


def reshape(x, /, shape):
    return x.reshape(tuple(shape))


def permute_dims(x, /, axes):
    return x.permute(*axes)


def broadcast_to(x, /, shape):
    return x.broadcast_to(tuple(shape))


def concat(xs, /, *, axis=0):
    return torch.cat(list(xs), dim=axis)


def stack(xs, /, *, axis=0):
    return torch.stack(list(xs), dim=axis)


def zeros_like(x, /):
    return torch.zeros_like(x)


def ones_like(x, /):
    return torch.ones_like(x)


def matmul(x, y, /):
    return x @ y


def svd(x, /):
    return tuple(torch.linalg.svd(x, full_matrices=False))


def take_along_axis(x, indices, /, *, axis):
    return torch.take_along_dim(x, indices, dim=axis)


def relu(x, /):
    return F.relu(x)


def softmax(x, /, *, axis=-1):
    return F.softmax(x, dim=axis)


def interpolate(x, /, size, *, mode="bilinear"):
    kw = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, **kw)


# ---- autodiff -------------------------------------------------------------------------------
def grad(outputs, inputs, grad_outputs=None, *, retain_graph=False, create_graph=False, required=0):
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    gos = None if grad_outputs is None else (
        list(grad_outputs) if isinstance(grad_outputs, (list, tuple)) else [grad_outputs])
    gs = torch.autograd.grad(outs, ins, gos, retain_graph=retain_graph or create_graph,
                             create_graph=create_graph, allow_unused=True)
    if any(g is None for g in gs[:required]):
        raise ModelError(NO_INPUT_GRADIENT)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, ins)]


def with_grad(x):
    return x.detach().requires_grad_(True)


def stop_gradient(x):
    return x.detach()


def scale_gradient(x, scale):
    if not x.requires_grad:
        return x
    s = scale.detach()
    if x.is_leaf:  # a leaf's hook would also change what autograd.grad reports for it
        xs = x.detach()
        return xs + (x - xs) * s
    # A tensor hook costs no forward op. One registered before a later in-place op (nn.ReLU
    # (inplace=True), ``out += identity``) receives the gradient at the value *before* that op,
    # which is exactly what must be scaled.
    x.register_hook(lambda g: g * s)
    return x


def watch_gradient(x, fn):
    if x.requires_grad:
        x.register_hook(lambda g: fn(g))  # returns None: the gradient is unchanged
    return x


def alias(x):
    return x.view_as(x)


def batch_dot(x, y):
    n = x.shape[0]
    xs, ys = x.reshape(n, -1), y.reshape(n, -1)
    if xs.numel() <= 1 << 20:  # small: one product and one reduction cost less than n calls
        return (xs * ys).sum(1)
    # large: one BLAS dot per sample, memory-bound, no temporary (a batched (1, k)·(k, 1)
    # matrix product took 4x longer on CPU)
    return torch.stack([torch.dot(xs[i], ys[i]) for i in range(n)])


def custom_vjp(forward: Callable[..., torch.Tensor], backward: Callable) -> Callable[..., torch.Tensor]:
    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out = forward(*inputs)
            ctx.save_for_backward(*inputs, out)
            return out

        @staticmethod
        def backward(ctx, grad_output):
            *inputs, out = ctx.saved_tensors
            grads = backward(tuple(inputs), out, grad_output)
            return tuple(grads)

    return _Fn.apply


def enable_grad():
    return torch.enable_grad()


def no_grad():
    return torch.no_grad()


# ---- layers & hooks -------------------------------------------------------------------------
_KINDS: list[tuple[tuple[type, ...], str]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.Linear,), "linear"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "batchnorm"),
    ((nn.ReLU,), "relu"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "maxpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avgpool"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "adaptive_avgpool"),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), "adaptive_maxpool"),
    ((nn.Flatten,), "flatten"),
    ((nn.LayerNorm,), "layernorm"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "dropout"),
    ((nn.Identity,), "identity"),
]

#: Activation modules → the neutral function name of ``xplain.backend.ACTIVATIONS``. Order
#: matters: ``ReLU6`` is a subclass of ``Hardtanh``.
_ACTIVATIONS: list[tuple[type, str]] = [
    (nn.ReLU6, "relu6"), (nn.Hardtanh, "hardtanh"), (nn.LeakyReLU, "leaky_relu"),
    (nn.PReLU, "prelu"), (nn.RReLU, "rrelu"), (nn.ELU, "elu"), (nn.SELU, "selu"), (nn.CELU, "celu"),
    (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"), (nn.Mish, "mish"),
    (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.Softsign, "softsign"),
    (nn.Hardsigmoid, "hardsigmoid"), (nn.Softplus, "softplus"), (nn.LogSigmoid, "log_sigmoid"),
    (nn.Tanhshrink, "tanhshrink"), (nn.Softshrink, "softshrink"), (nn.Hardshrink, "hardshrink"),
    (nn.Threshold, "threshold"), (nn.Softmax, "softmax"), (nn.Softmax2d, "softmax"),
    (nn.LogSoftmax, "log_softmax"), (nn.Softmin, "softmin"), (nn.GLU, "glu"),
]

#: Modules that are the identity in evaluation mode, found by class name (torchvision.ops is
#: optional): EfficientNet's and ConvNeXt's stochastic depth.
_IDENTITY_IN_EVAL = ("StochasticDepth",)

#: torchvision's Swin attention (its forward calls ``shifted_window_attention`` with the weights).
_WINDOW_ATTENTION = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")

#: Parameter-free modules that only reorder axes, found by class name (torchvision.ops.misc;
#: MaxViT's window partitions and axis swaps).
_REORDERS = ("Permute", "WindowPartition", "WindowDepartition", "SwapAxes")

#: Attention modules whose query, key and value come from one projection module (``q | k | v``
#: on its output's last axis): (module path prefix, class name) → the projection's attribute.
#: torchvision's MaxViT; timm's ViT/DeiT ``Attention`` (``qkv`` reshaped to (B, N, 3, H, D)).
_PACKED_ATTENTION = {("torchvision.", "RelativePositionalMultiHeadAttention"): "to_qkv",
                     ("timm.", "Attention"): "qkv"}


def _packed_qkv_name(m: nn.Module) -> str | None:
    for (prefix, cls), attr in _PACKED_ATTENTION.items():
        if type(m).__name__ == cls and type(m).__module__.startswith(prefix) \
                and isinstance(getattr(m, attr, None), nn.Linear):
            return attr
    return None


def _packed_output(m: nn.Module) -> dict[str, Any]:
    """``packed_scale``, ``out_weight``, ``out_bias`` of a packed attention module: timm's
    ``softmax(q·kᵀ·scale)·v`` then ``proj``; MaxViT's scales its keys by another factor and adds
    a position bias (``packed_scale`` ``None``: not re-evaluated)."""
    proj = getattr(m, "proj", None)
    if type(m).__module__.startswith("timm.") and isinstance(proj, nn.Linear):
        return {"packed_scale": float(m.scale), "out_weight": proj.weight, "out_bias": proj.bias}
    return {"packed_scale": None}


def _packed_unsupported(m: nn.Module) -> str | None:
    """What a packed attention module computes beyond ``softmax(q·kᵀ)·v`` (timm's options)."""
    for attr in ("q_norm", "k_norm", "norm"):
        sub = getattr(m, attr, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            return f"a {attr} layer inside the attention ({type(sub).__name__})"
    if getattr(m, "gate", None) is not None:
        return "a gate inside the attention"
    return None


def _activation_attrs(m: nn.Module, function: str) -> dict[str, Any]:
    """``xplain.backend.activation_attrs`` of an activation module."""
    return activation_attrs(
        function, inplace=bool(getattr(m, "inplace", False)),
        softplus_beta=float(m.beta) if function == "softplus" else 1.0,
        clamp=(float(m.min_val), float(m.max_val)) if function == "hardtanh" else None,
        threshold=(float(m.threshold), float(m.value)) if function == "threshold" else None)


def _tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _layer_info(lname: str, m: nn.Module) -> LayerInfo:
    kind = next((k for types, k in _KINDS if isinstance(m, types)), None)
    function = next((f for t, f in _ACTIVATIONS if isinstance(m, t)), None)
    if function is not None:
        kind = "activation"
    elif kind is None and type(m).__name__ in _IDENTITY_IN_EVAL:
        kind = "dropout"
    elif kind is None and type(m).__name__ in _REORDERS and not any(True for _ in m.parameters()):
        kind = "reshape"
    elif kind is None and type(m).__name__ in _WINDOW_ATTENTION and type(m).__module__.startswith("torchvision."):
        kind = "window_attention"
    elif kind is None and _packed_qkv_name(m) is not None:
        kind = "packed_attention"
    has_children = next(iter(m.children()), None) is not None
    if kind is None:
        kind = "container" if has_children else "other"
    params: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if function is not None:
        attrs = _activation_attrs(m, function)
        params = dict(m.named_parameters(recurse=False))
    if kind == "conv":
        nd = m.weight.ndim - 2
        params = {"weight": m.weight, "bias": m.bias}
        attrs = {"ndim": nd, "stride": _tuple(m.stride, nd), "dilation": _tuple(m.dilation, nd),
                 "padding": m.padding if isinstance(m.padding, str) else _tuple(m.padding, nd),
                 "groups": m.groups, "padding_mode": m.padding_mode,
                 "transposed": bool(getattr(m, "transposed", False))}
    elif kind == "linear":
        params = {"weight": m.weight, "bias": m.bias}
    elif kind == "batchnorm":
        params = {"weight": m.weight, "bias": m.bias, "running_mean": m.running_mean,
                  "running_var": m.running_var}
        attrs = {"eps": float(m.eps), "track_running_stats": m.track_running_stats}
    elif kind in ("maxpool", "avgpool"):
        attrs = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}
    elif kind in ("adaptive_avgpool", "adaptive_maxpool"):
        attrs = {"output_size": m.output_size}
    elif kind == "relu":
        attrs = {"inplace": bool(m.inplace)}
    elif kind == "layernorm":
        params = {"weight": m.weight, "bias": m.bias}
        # torchvision's LayerNorm2d (ConvNeXt) normalises an NCHW map over its channels (it
        # permutes around F.layer_norm); LRP checks the re-evaluation against the real output
        axes = (1,) if type(m).__name__ == "LayerNorm2d" else tuple(range(-len(m.normalized_shape), 0))
        attrs = {"eps": float(m.eps), "axes": axes}
    elif kind == "attention":
        params, attrs = _attention_info(m)
    elif kind == "window_attention":
        kind = "attention"
        params, attrs = _window_attention_info(m)
    elif kind == "packed_attention":
        kind = "attention"
        params = dict(m.named_parameters(recurse=False))
        attrs = {"heads": int(getattr(m, "n_heads", getattr(m, "num_heads", 0))),
                 "packed_qkv": getattr(m, _packed_qkv_name(m)), "unsupported": _packed_unsupported(m),
                 **_packed_output(m)}
    elif kind in ("other", "container"):  # a container's own parameters (attention, layer scale)
        params = dict(m.named_parameters(recurse=False))
    return LayerInfo(lname, kind, type(m).__name__, m, params, attrs, has_children)


_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _attention_info(m: nn.MultiheadAttention) -> tuple[dict, dict]:
    """``xplain.backend.ATTENTION_ATTRS`` of ``nn.MultiheadAttention``."""
    if m._qkv_same_embed_dim:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bq = bk = bv = None
    if m.in_proj_bias is not None:
        bq, bk, bv = m.in_proj_bias.chunk(3)
    params = {"q_weight": wq, "k_weight": wk, "v_weight": wv, "q_bias": bq, "k_bias": bk,
              "v_bias": bv, "out_weight": m.out_proj.weight, "out_bias": m.out_proj.bias}
    unsupported = None
    if m.bias_k is not None or m.bias_v is not None:
        unsupported = "learned key/value biases (add_bias_kv=True)"
    elif m.add_zero_attn:
        unsupported = "add_zero_attn=True"

    def read_call(args: tuple, kwargs: dict) -> tuple:
        bound = _MHA_SIGNATURE.bind(m, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        q, k, v = a["query"], a["key"], a["value"]
        n, lq, ls = (q.shape[0], q.shape[1], k.shape[1]) if m.batch_first else \
            (q.shape[1], q.shape[0], k.shape[0])
        mask = None
        attn_mask = a["attn_mask"]
        if attn_mask is None and a["is_causal"]:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            mask = mask.reshape(1, 1, lq, ls) if mask.dim() == 2 else mask.reshape(n, m.num_heads, lq, ls)
        if a["key_padding_mask"] is not None:
            pad = _additive(a["key_padding_mask"], q.dtype).reshape(n, 1, 1, ls)
            mask = pad if mask is None else mask + pad
        return q, k, v, mask

    def write_output(output: Any, y: torch.Tensor) -> Any:
        return (y,) + tuple(output[1:])

    def write_call(args: tuple, kwargs: dict, q: Any, k: Any, v: Any) -> tuple[tuple, dict]:
        bound = _MHA_SIGNATURE.bind(m, *args, **kwargs)
        if m.batch_first and not (q is k and k is v):
            # the layer computes in (L, N, E): three distinct batch-first inputs are transposed
            # to strided views, on which the projections run as batched matmuls (measured 2.4x
            # slower than the packed projection of one input); laid out as (L, N, E) in memory
            # they transpose to contiguous tensors
            q, k, v = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (q, k, v))
        bound.arguments.update(query=q, key=k, value=v)
        return tuple(bound.args[1:]), dict(bound.kwargs)

    def weights_call(args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
        # per-head weights come back as output[1] (the unfused path: no extra cost measured)
        bound = _MHA_SIGNATURE.bind(m, *args, **kwargs)
        bound.apply_defaults()
        asked = (bound.arguments["need_weights"], bound.arguments["average_attn_weights"])
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}, asked

    def split_weights(output: Any, asked: Any) -> tuple[torch.Tensor, Any]:
        y, weights = output[0], output[1]
        if not asked[0]:
            return weights, (y, None)
        return weights, (y, weights.mean(dim=1) if asked[1] else weights)

    return params, {"heads": int(m.num_heads), "batch_first": bool(m.batch_first),
                    "unsupported": unsupported, "read_call": read_call, "write_output": write_output,
                    "write_call": write_call, "weights_call": weights_call,
                    "split_weights": split_weights}


def _window_attention_info(m: nn.Module) -> tuple[dict, dict]:
    """The neutral description of torchvision's Swin attention (``xplain.methods._attention.
    window_attention`` re-evaluates it); its input is ``(N, H, W, C)``."""
    cosine = type(m).__name__ == "ShiftedWindowAttentionV2"
    params = {"qkv_weight": m.qkv.weight, "qkv_bias": m.qkv.bias, "out_weight": m.proj.weight,
              "out_bias": m.proj.bias, "logit_scale": m.logit_scale if cosine else None}

    def relative_bias() -> torch.Tensor:
        return m.get_relative_position_bias()

    return params, {"heads": int(m.num_heads), "window_size": tuple(m.window_size),
                    "shift_size": tuple(m.shift_size), "cosine": cosine,
                    "relative_bias": relative_bias, "unsupported": None}


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A torch attention mask as an additive one: boolean ``True`` = not allowed."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def layers(model: nn.Module) -> list[LayerInfo]:
    return [_layer_info(n, m) for n, m in model.named_modules(remove_duplicate=False)]


def add_forward_hook(layer: nn.Module, hook, *, with_kwargs: bool = False):
    return layer.register_forward_hook(hook, with_kwargs=with_kwargs)


def add_forward_pre_hook(layer: nn.Module, hook, *, with_kwargs: bool = False):
    return layer.register_forward_pre_hook(hook, with_kwargs=with_kwargs)


def add_gradless_calls(layer: nn.Module) -> list:
    """Hooks that run ``layer``'s own forward without recording a graph (its output is replaced
    by a re-evaluation that carries the gradient): gradients off before the call, back on after
    it, also when it raises."""
    state: list[bool] = []

    def pre(_m: nn.Module, _inputs: tuple) -> None:
        state.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def post(_m: nn.Module, _inputs: tuple, _output: Any) -> None:
        torch.set_grad_enabled(state.pop() if state else True)

    return [layer.register_forward_pre_hook(pre),
            layer.register_forward_hook(post, prepend=True, always_call=True)]


def call_layer(layer: nn.Module, *inputs):
    return layer(*inputs)


# ---- functional layers ----------------------------------------------------------------------
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _pointwise_strided(weight, stride, padding) -> bool:
    """A 1x1 kernel with stride > 1 and no padding: the same as a stride-1 one on the input
    subsampled by the stride. Its input gradient is then a cheap 1x1 one plus a scatter,
    where the strided kernel's input gradient costs 5-10x more on CPU (ResNet downsample)."""
    return (not isinstance(padding, str) and set(weight.shape[2:]) == {1}
            and set(padding) == {0} and set(stride) != {1})


def conv(x, weight, bias=None, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    if _pointwise_strided(weight, stride, padding):
        x = x[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]
        stride = (1,) * len(stride)
    return _CONV[weight.ndim - 2](x, weight, bias, stride=tuple(stride),
                                  padding=padding if isinstance(padding, str) else tuple(padding),
                                  dilation=tuple(dilation), groups=groups)


def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


# ---- model state ----------------------------------------------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes as a uint8 tensor (bit-exact comparison, NaN payloads included)."""
    t = t.detach().reshape(-1)  # a contiguous copy where t is not contiguous
    return t.view(torch.uint8) if t.numel() else t


def _slots(m: nn.Module) -> tuple[dict, dict, dict]:
    return m._parameters, m._buffers, m._modules


def _hook_keys(m: nn.Module) -> dict:
    """The keys of ``m``'s non-empty hook dicts (most modules have none: nothing is copied)."""
    d = m.__dict__
    return {h: tuple(d[h]) for h in _HOOK_DICTS if d.get(h)}


def _packed_bits(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The bytes of ``tensors`` (non-empty, one device) in one new uint8 tensor: one copy and
    one comparison for a model's many small buffers instead of one per buffer."""
    return torch.cat([_bits(t) for t in tensors])


def _unique_members(mods: list[tuple[str, nn.Module]], slot: str) -> list[tuple[str, torch.Tensor]]:
    """``(qualified name, tensor)`` of each distinct tensor in the modules' ``slot`` dict
    (``"_parameters"`` / ``"_buffers"``), first name kept: ``model.named_parameters()`` /
    ``named_buffers()`` from the module walk already made (one walk, not three)."""
    out, seen = [], set()
    for n, m in mods:
        for k, t in getattr(m, slot).items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append((f"{n}.{k}" if n else k, t))
    return out


def _buffer_groups(mods: list[tuple[str, nn.Module]]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    by_device: dict[Any, list[torch.Tensor]] = {}
    for _, b in _unique_members(mods, "_buffers"):
        if b.numel():
            by_device.setdefault(b.device, []).append(b)
    return [(bufs, _packed_bits(bufs)) for bufs in by_device.values()]


def snapshot(model: nn.Module, deep: bool = False) -> dict:
    mods = list(model.named_modules(remove_duplicate=False))
    params = _unique_members(mods, "_parameters")
    return {
        "training": [(m, m.training) for _, m in mods],
        "requires_grad": [(p, p.requires_grad) for _, p in params],
        # which object sits where: a replaced parameter, buffer or sub-module shows up here
        "slots": [(n, m, *map(dict, _slots(m))) for n, m in mods
                  if not isinstance(m, torch.jit.ScriptModule)],  # compiled: its slots are fixed
        # in-place ops bump _version; `p.data = t` changes the storage pointer
        "versions": [(n, p, p._version, p.data_ptr(), p.data) for n, p in params],
        # buffers (BatchNorm statistics) are small: keep their bytes so they can be put back
        # (BatchNorm's running-stat update does not bump the version counter: compare values)
        "buffers": _buffer_groups(mods),
        "hooks": [(m, _hook_keys(m)) for _, m in mods],
        "grads": [(p, p.grad) for _, p in params],
        # edits through `.data` or under no_grad with a fresh version counter are invisible to
        # the cheap checks above: a deep snapshot keeps the values themselves
        "values": [(n, p, p.detach().clone()) for n, p in params] if deep else None,
    }


def _put_back_buffers(groups: list[tuple[list[torch.Tensor], torch.Tensor]]) -> None:
    for bufs, saved in groups:
        if torch.equal(_packed_bits(bufs), saved):
            continue
        start = 0
        for b in bufs:
            n = b.numel() * b.element_size()
            seg = saved[start:start + n]
            start += n
            if not torch.equal(_bits(b), seg):
                b.copy_(seg.clone().view(b.dtype).reshape(b.shape))  # clone: aligned storage


def restore(model: nn.Module, snap: dict) -> None:
    put_back_slots(snap["slots"], _slots)
    for m, flag in snap["training"]:
        m.training = flag
    for _, p, _, ptr, data in snap["versions"]:
        if p.data_ptr() != ptr:
            p.data = data
    for p, flag in snap["requires_grad"]:
        p.requires_grad_(flag)
    for m, saved in snap["hooks"]:
        d = m.__dict__
        for h in _HOOK_DICTS:
            current = d.get(h)
            if current:
                before = saved.get(h, ())
                for key in [k for k in current if k not in before]:
                    del current[key]
    for p, g in snap["grads"]:
        p.grad = g
    with torch.no_grad():
        _put_back_buffers(snap["buffers"])
        for _, p, saved in snap["values"] or ():
            if not torch.equal(_bits(p), _bits(saved)):
                p.data.copy_(saved)  # .data: the copy must not bump the version counter


def changed(model: nn.Module, snap: dict) -> list[str]:
    """What differs from ``snap`` (call before :func:`restore` puts values back)."""
    out = replaced_slots(snap["slots"], _slots, ("parameter", "buffer", "sub-module"))
    for n, p, version, ptr, _ in snap["versions"]:
        if p._version != version:
            out.append(f"{n} was modified in place")
        elif p.data_ptr() != ptr:
            out.append(f"{n} was given new storage (p.data = ...)")
    flagged = {s.split(" ")[0] for s in out}
    for n, p, saved in snap["values"] or ():
        if n not in flagged and not torch.equal(_bits(p), _bits(saved)):
            out.append(f"{n} was modified (its values changed without an in-place op, e.g. "
                       f"through .data)")
    return out


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def prepare(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def forward(model: nn.Module, x):
    return model(x)
