"""A model summary table (layers, kernel and output shapes, parameters, multiply-adds),
framework-neutral: read from the model's observation (:mod:`xplain.observe`: one batch-1 pass
with hooks on every layer, shared with the layer listing and the explanations of the same model
and input shape).

The counts follow the convention of torchsummaryX, which users know from the CNN tutorials:

* **params** — trainable weights and biases of each layer (BatchNorm's running statistics are
  buffers, not parameters). A layer called several times (torchvision's BasicBlock calls one
  ReLU twice) is listed once per call, its parameters counted once. A parameter whose layer did
  not run as a leaf is shown on the nearest enclosing layer that ran (a ViT's class token and
  position embedding; torch's ``MultiheadAttention`` and Swin's attention, whose projections
  run functionally from their weights), so the total is every parameter of the layers that ran.
* **mult-adds** — multiply-accumulate operations of convolutions and fully connected layers,
  for the whole batch given in ``input_shape`` (``batch ×`` one sample's):
  conv: ``out_numel × (in_channels / groups) × kh × kw``; linear: ``out_numel × in_features``;
  an attention layer's functional projections: ``tokens × out × in`` per weight (Swin's over its
  windows, padded); the attention products themselves count 0.
  Additions of biases, BatchNorm, activations and pooling count 0 (torchsummaryX adds one per
  BatchNorm weight, a difference of < 0.01 % on ResNets).

Example: ``print(xplain.summary(model, (1, 3, 224, 224)))`` on ResNet-18 gives 11,689,512
parameters and 1,814,073,344 mult-adds (≈ 11.7 M and 1.81 G).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import LayerInfo
from .backends import backend_for
from .errors import InputError
from .observe import batched_shape, observe_model


@dataclass
class SummaryRow:
    """One leaf-layer call in the probe forward."""

    name: str
    kind: str
    type_name: str
    kernel_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    params: int
    mult_adds: int


@dataclass
class Summary:
    """What :func:`summary` returns; ``str(summary)`` is the table."""

    rows: list[SummaryRow] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    total_params: int = 0
    total_mult_adds: int = 0

    def __str__(self) -> str:
        head = ("Layer", "Type", "Kernel shape", "Output shape", "Params", "Mult-Adds")
        body = [(r.name or "(root)", r.type_name,
                 "-" if r.kernel_shape is None else str(list(r.kernel_shape)),
                 "-" if r.output_shape is None else str(list(r.output_shape)),
                 f"{r.params:,}" if r.params else "-", f"{r.mult_adds:,}" if r.mult_adds else "-")
                for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]
        right = {4, 5}

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        out = [rule, line(head), rule, *(line(b) for b in body), rule,
               f"Input shape:     {list(self.input_shape)}",
               f"Total params:    {self.total_params:,} ({self.total_params / 1e6:.2f} M)",
               f"Total mult-adds: {self.total_mult_adds:,} ({self.total_mult_adds / 1e9:.2f} G)",
               rule]
        return "\n".join(out)


def _numel(backend: Any, t: Any) -> int:
    return 0 if t is None else int(np.prod(backend.shape(t), dtype=np.int64))


def _parameters_by_row(B: Any, model: Any, obs: Any, by_name: dict[str, LayerInfo]) -> dict[str, list]:
    """``{row layer: [(parameter name, parameter)]}``: each parameter goes to the layer that owns
    it where that layer ran as a leaf, else to the nearest enclosing layer that ran (a class
    token or position embedding to the module whose forward uses it; torch's attention
    projections, which run functionally from the attention layer's own and its children's
    weights, to the attention layer). Parameters of layers that never ran inside one that did
    not run either are not shown."""
    called = {c.name for c in obs.calls}
    leaves = {c.name for c in obs.calls if c.leaf and by_name[c.name].kind != "container"}
    rows: dict[str, list] = {}
    for pname, p in B.named_parameters(model):
        owner = pname.rpartition(".")[0]
        if owner not in leaves:
            while owner and owner not in called:
                owner = owner.rpartition(".")[0]
            if owner not in called:
                continue
        rows.setdefault(owner, []).append((pname, p))
    return rows


def _inner_mult_adds(B: Any, info: LayerInfo, call: Any, owned: list, by_name: dict[str, LayerInfo]) -> int:
    """Mult-adds of the linear maps an attention layer computes functionally from weights its
    row shows (torch's MultiheadAttention: its packed or separate query/key/value projection
    weights and its ``out_proj``; Swin's attention: ``qkv`` and ``proj`` over its windows,
    padded): each ``(out, in)`` weight once per token. Other functional computations (the
    attention products, a position-bias MLP) count 0, as for leaves."""
    shapes = [tuple(f.shape) for f in call.inputs if f is not None]
    if info.kind != "attention" or not shapes:
        return 0
    x = shapes[0]
    if "window_size" in info.attrs and len(x) == 4:  # (N, H, W, C), padded to whole windows
        wh, ww = (int(v) for v in info.attrs["window_size"])
        tokens = x[0] * -(-x[1] // wh) * wh * -(-x[2] // ww) * ww
    else:
        tokens = int(np.prod(x[:-1], dtype=np.int64))
    total = 0
    for pname, p in owned:
        owner, _, leaf = pname.rpartition(".")
        shape = B.shape(p)
        child_linear = owner != info.name and owner in by_name and by_name[owner].kind == "linear" \
            and leaf == "weight"
        if len(shape) == 2 and (child_linear or (owner == info.name and leaf.endswith("proj_weight"))):
            total += tokens * int(shape[0]) * int(shape[1])
    return total


def _mult_adds(backend: Any, info: LayerInfo, out_shape: tuple[int, ...] | None) -> int:
    if out_shape is None or info.kind not in ("conv", "linear"):
        return 0
    w_shape = backend.shape(info.params["weight"])  # neutral: (out, in/groups, k...) / (out, in)
    return int(np.prod(out_shape, dtype=np.int64)) * int(np.prod(w_shape[1:], dtype=np.int64))


def summary(model: Any, input_shape: tuple[int, ...] = (1, 3, 224, 224), *,
            backend: str | None = None, dtype: str = "float32") -> Summary:
    """Per-layer table of a model: kernel shape, output shape, parameters, multiply-adds.

    Reads the model's observation (:func:`xplain.observe.observe_model`) for inputs shaped like
    ``input_shape``: one batch-1 pass on seeded standard-normal numbers (run only when no
    explanation or listing of this model and per-sample shape ran before), under the
    borrowed-model guard: hooks are removed afterwards and the model is not modified (it is put
    in eval mode for the pass and its flags restored). Output shapes are shown at the batch of
    ``input_shape`` (:func:`xplain.observe.batched_shape`), mult-adds counted for all of it.

    Args:
        model: a model of any registered backend.
        input_shape: shape of the probe input, batch first.
        backend: force a backend by name (default: detected from the model).
        dtype: numpy dtype the probe numbers are drawn in (the tensor then takes the floating
            dtype of the model's parameters, as every probe input does).

    Returns:
        :class:`Summary` with ``rows``, ``total_params``, ``total_mult_adds``.
    """
    from .guard import borrowed

    B = backend_for(model, name=backend)
    if not B.is_model(model):
        raise InputError(f"summary() needs a {B.name} model, got {type(model).__name__}")
    if len(input_shape) < 2 or any(int(s) <= 0 for s in input_shape):
        raise InputError(f"input_shape={input_shape} must be a batch-first shape of positive "
                         f"sizes, e.g. (1, 3, 224, 224)")
    batch = int(input_shape[0])
    infos = B.layers(model)
    by_name = {i.name: i for i in infos}
    # ``like`` must be a tensor of the model's framework: take any parameter
    like = next((p for i in infos for p in i.params.values() if p is not None), None)
    if like is None:
        raise InputError("summary() needs a model with at least one parameter")
    sample = (1,) + tuple(int(s) for s in input_shape[1:])
    # random numbers, not zeros: the observation is shared, and its value facts (signs, gates,
    # which layers feed the scores) would be degenerate on zeros
    probe = np.random.default_rng(0).standard_normal(sample).astype(dtype)
    with B.gradient_lock(), borrowed(B, model):  # the shared pass takes a gradient (see observe)
        obs = observe_model(B, model, B.asarray(probe, like=like), infos)
    result = Summary(input_shape=tuple(int(s) for s in input_shape))
    owned = _parameters_by_row(B, model, obs, by_name)
    counted: set[int] = set()
    for call in obs.calls:
        info = by_name[call.name]
        if (not call.leaf or info.kind == "container") and not owned.get(call.name):
            continue
        first = id(info.module) not in counted
        counted.add(id(info.module))
        params = sum(_numel(B, p) for _, p in owned.get(call.name, ())) if first else 0
        kernel = (B.shape(info.params["weight"]) if info.kind in ("conv", "linear")
                  and info.params.get("weight") is not None else None)
        shape = (call.output.shape if call.output is not None else
                 call.output_shapes[0] if call.output_shapes else None)  # a tuple's first item
        adds = _mult_adds(B, info, shape) if call.leaf else \
            _inner_mult_adds(B, info, call, owned.get(call.name, []), by_name)
        row = SummaryRow(info.name, info.kind, info.type_name, kernel,
                         None if shape is None else batched_shape(shape, batch), params, batch * adds)
        result.rows.append(row)
        result.total_params += row.params
        result.total_mult_adds += row.mult_adds
    return result
