"""One batch-1 forward pass that watches a model, shared by everything in xplain that needs to
know what the model does (docs/architecture.md §11).

LRP's canonisation (:mod:`xplain.methods.lrp.canonize`), the layer listing and the CAM default
layer (:mod:`xplain.layers`, :mod:`xplain.methods.cam.target`), the summary table
(:mod:`xplain.summary`) and the memory estimate (:meth:`xplain.run.Run.per_sample_bytes`) all
derive their answers from one :class:`Observation`: a pre- and a post-hook on every layer
(leaves, containers and the root) record each call — execution order, nesting, input and output
shapes and dtypes, and tensor identity as *tokens* (equal tokens: the same tensor object; token 0
is the model input) — plus the value facts the clients need:

* the sign of a conv/linear layer's input when it reads it, and sums of every leaf output when
  produced, of a ReLU's input when it reads it and of each tensor at the end of the pass (an
  output changed in place later, as ``out += identity`` does, shows as a changed sum);
* gates: activations inside a container whose output ``s`` makes the container's output exactly
  its input times ``s`` (squeeze-and-excitation);
* what a container does with parameters of its own (:attr:`Call.param_uses`): a layer scale
  (its output is ``p · u`` or ``x + p · u`` for the output ``u`` of a call inside it), a
  constant added to a call's input (a position embedding: ``x + p``) or put in front of it along
  the token axis (a class token);
* the layout of every 4-D output, and the prefix and grid of every token sequence
  ``(N, T, C)`` (:mod:`xplain.layout`);
* with a ``scores`` function, which CAM candidates (spatial maps, not head pools) the scores
  depend on: each gets a zero leaf added to its output, and the gradient of a random projection
  of the scores there is exactly zero where the scores do not depend on the map (an auxiliary
  head); taken from the last candidate back to the first that feeds.

The result holds no tensors: shapes, tokens, sums as Python floats. It is cached weakly per model
object under the model's structure (layer names, module objects, classes, parameter shapes), the
per-sample input shape and dtype, and what the scores were taken from (``output=`` as an index
or a name; a selector function identifies nothing and is not cached). Which facts depend on the
input's values (signs, gates, dead units) is decided on the first sample that comes; later calls
with the same key reuse it, as every probe of xplain always did.
"""
from __future__ import annotations

import numbers
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from .backend import Backend, LayerInfo, Tensor
from .checks import call_model
from .layout import CHANNELS_FIRST, HEAD_POOLS, KEEPS_LAYOUT, TOKENLESS, decide_layout, map_size, \
    own_layout, parse_tokens, plausible_layouts, token_layout

if TYPE_CHECKING:
    from .run import Run

#: Kinds whose input's sign a rule depends on (LRP's z⁺/γ): their first input is checked to be
#: ``>= 0`` when they read it. Every other layer is not checked, which would cost one comparison
#: per activation.
SIGN_READERS = ("conv", "linear")

#: Kinds that may gate a signal (see :attr:`Call.gates`).
GATE_KINDS = ("activation", "relu")

#: At most this many structures (input shapes, replaced sub-layers) are kept per model.
_MAX_KEYS = 8


@dataclass(frozen=True)
class TensorFacts:
    """One tensor seen in the pass. ``token``: its identity (equal tokens, the same tensor
    object or a value-identical stand-in the pass substituted; ``0``: the model input)."""

    token: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes at four per element: xplain's memory estimate counts float32 activations."""
        return 4 * self.numel


@dataclass(frozen=True)
class Call:
    """One call of one layer in the observed pass.

    Attributes:
        index: position in execution order, counted when calls return (a container after its
            children; the root last).
        name, kind: the layer's dotted name and neutral kind (:class:`~xplain.backend.LayerInfo`).
        leaf: the layer has no sub-layers.
        first_inner: ``index`` of the first call made inside this one: ``calls[first_inner:index]``
            ran inside it (empty for a leaf).
        inputs: the positional inputs (``None`` for non-tensors).
        output: the output when it is one tensor, else ``None``.
        output_shapes: for a tuple/list output, each item's shape (``None`` for non-tensors).
        input_nonneg: for :data:`SIGN_READERS` leaves, whether the first input was ``>= 0``
            everywhere when read; else ``None``.
        input_sum: for a ReLU or another activation, the sum of its first input when read
            (before an in-place layer overwrites it); else ``None``.
        output_sum: for a leaf with a floating output, its sum when produced; else ``None``.
        input_views_model_input: the first input is the model input itself or a reshaped copy of
            it (``x.view``, Flatten); leaves only.
        layout, layout_reason: for a 4-D output, its layout (:func:`xplain.layout.decide_layout`)
            and the evidence; ``None``/``""`` otherwise.
        gates: for a container, the ``index`` of each activation call inside it whose output
            ``s`` makes the container's output exactly its input times ``s``.
        zero_leaf: a zero leaf was added to the output for the feeds check.
        param_uses: for a container with parameters of its own, ``(parameter name, relation,
            call index)`` for each parameter whose use was proven: ``"scale"`` (the container's
            output is ``p · u`` or its input plus that, ``u`` the output of that call; for a
            leaf of unknown kind with one parameter, its output is its input times it, the
            index its own),
            ``"add"`` (that call's first input is the container's input plus ``p``) or
            ``"prefix"`` (that call's first input starts with ``p`` along axis 1).
    """

    index: int
    name: str
    kind: str
    leaf: bool
    first_inner: int
    inputs: tuple[TensorFacts | None, ...]
    output: TensorFacts | None
    output_shapes: tuple[tuple[int, ...] | None, ...] = ()
    input_nonneg: bool | None = None
    input_sum: float | None = None
    output_sum: float | None = None
    input_views_model_input: bool = False
    layout: str | None = None
    layout_reason: str = ""
    gates: tuple[int, ...] = ()
    zero_leaf: bool = False
    param_uses: tuple[tuple[str, str, int], ...] = ()

    @property
    def first_input(self) -> TensorFacts | None:
        """The first positional input, when it is a tensor."""
        return self.inputs[0] if self.inputs else None


@dataclass(frozen=True, eq=False)
class Observation:
    """What one batch-1 pass saw (see the module docstring). Immutable; holds no tensors.

    Attributes:
        key: the structure-and-input key it is cached under (``None``: not cacheable).
        input: the batch-1 model input (token 0).
        calls: every layer call, in :attr:`Call.index` order.
        final_sums: token → sum at the end of the forward pass, for every token some call
            recorded an :attr:`Call.output_sum` for, and every activation's first input.
        feeds: layer name → whether the scores depend on its output, for the CAM candidates the
            check reached (from the last one back to the first that feeds; non-floating maps are
            ``False``). Empty without scores.
        scored: a backward pass from the scores ran (``False`` without scores, without a
            gradient in this context, or when the model's scores carry none).
    """

    key: tuple | None
    input: TensorFacts
    calls: tuple[Call, ...]
    final_sums: Mapping[int, float]
    feeds: Mapping[str, bool]
    scored: bool

    def call_counts(self) -> Mapping[str, int]:
        """How often each layer ran, by name (layers that did not run are absent)."""
        counts: dict[str, int] = {}
        for c in self.calls:
            counts[c.name] = counts.get(c.name, 0) + 1
        return MappingProxyType(counts)

    def leaf_output_bytes(self) -> tuple[int, int]:
        """``(sum, largest)`` of leaf-layer output bytes per sample (:attr:`TensorFacts.nbytes`),
        every call counted: the activation estimate of :meth:`xplain.run.Run.per_sample_bytes`."""
        sizes = [c.output.nbytes for c in self.calls if c.leaf and c.output is not None]
        return sum(sizes), max(sizes, default=0)


def batched_shape(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """A shape observed at batch 1 as it is at ``batch``: the leading axis, xplain's batch axis,
    scaled when it is 1. (A layer that puts the batch elsewhere, a sequence-first attention, is
    shown at batch 1; per-sample counts such as bytes and mult-adds scale by ``batch`` anyway.)"""
    if batch == 1 or not shape or shape[0] != 1:
        return shape
    return (batch,) + tuple(shape[1:])


# ---- cache --------------------------------------------------------------------------------------
#: Marks an observation whose scores are not identified (no scores, a selector function): it
#: serves clients that need no feeds.
_UNSCORED = ("unscored",)

_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, dict[Hashable, Observation]]]" = \
    weakref.WeakKeyDictionary()


def selector_key(output: Any) -> tuple | None:
    """What identifies scores taken by ``explain(output=...)`` (:func:`xplain.checks.select_output`):
    an index, a name or ``None`` (the output itself); ``None`` for a function, whose identity says
    nothing about what it selects."""
    if output is None or isinstance(output, (numbers.Integral, str)):
        return ("output", output)
    return None


def structure_key(backend: Backend, infos: Sequence[LayerInfo], x: Tensor) -> tuple:
    """What an observation depends on besides the scores: each layer's name, object, class, kind
    and parameter shapes (a replaced head is a new key), and the per-sample shape and dtype of
    the input ``x``."""
    B = backend
    layers = tuple((i.name, id(i.module), i.type_name, i.kind,
                    tuple(B.shape(p) for p in i.params.values() if B.is_tensor(p)))
                   for i in infos)
    return layers, tuple(B.shape(x)[1:]), B.dtype_name(x)


def cached(model: Any, key: tuple | None, scores_key: tuple | None, *,
           need_feeds: bool) -> Observation | None:
    """The cached observation of ``model`` under ``key`` that serves a client, without running
    anything: the one for ``scores_key``; for a client that needs no feeds (facts of the forward
    pass only), failing that, any."""
    if key is None:
        return None
    try:
        entries = _CACHE.get(model, {}).get(key, {})
    except TypeError:  # a model that cannot be weakly referenced
        return None
    if scores_key is not None and scores_key in entries:
        return entries[scores_key]
    if not need_feeds and entries:
        return next(iter(entries.values()))
    return None


def _store(model: Any, obs: Observation, scores_key: tuple | None) -> None:
    if obs.key is None:
        return
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:
        return
    if obs.key not in per_model and len(per_model) >= _MAX_KEYS:
        per_model.clear()
    per_model.setdefault(obs.key, {})[_UNSCORED if scores_key is None else scores_key] = obs


# ---- entry points -------------------------------------------------------------------------------
def observe(backend: Backend, model: Any, x: Tensor, infos: Sequence[LayerInfo], *,
            scores: Callable[[Tensor], Tensor | None] | None = None,
            scores_key: tuple | None = None, need_feeds: bool = False,
            seed: int = 0) -> Observation:
    """The :class:`Observation` of ``model`` on ``x[:1]``, from the cache or from one pass.

    Args:
        infos: the model's layers (``backend.layers(model)``).
        scores: ``x -> (N, ...)`` scores whose dependence on each CAM candidate is checked
            (``Run.forward``, which applies ``output=``; :func:`model_scores`); returning
            ``None`` skips the check. Without it the pass runs without gradients.
        scores_key: what identifies ``scores`` in the cache (:func:`selector_key`); ``None``:
            its feeds are not reused.
        need_feeds: the caller reads :attr:`Observation.feeds`, so a cached observation of other
            scores does not serve.
        seed: of the random projection of the scores; only ``0`` is cached.

    A scored pass that fails (a model that cannot run with gradients recorded) is repeated
    without gradients for a caller that needs no feeds; otherwise its error propagates.
    """
    B = backend
    x = x[:1] if B.shape(x)[0] > 1 else x
    key = structure_key(B, infos, x) if seed == 0 else None
    hit = cached(model, key, scores_key, need_feeds=need_feeds)
    if hit is not None:
        return hit
    if scores is not None and B.gradients_unavailable(x) is not None:
        scores = None  # e.g. torch's inference_mode: no zero leaf could record a gradient
    try:
        obs = _Pass(B, model, x, infos, scored=scores is not None).run(scores, key, seed)
    except Exception:
        if scores is None or need_feeds:
            raise
        scores = None
        obs = _Pass(B, model, x, infos, scored=False).run(None, key, seed)
    # what the scores' check found (also: that the scores carry no gradient) holds for every
    # later call with these scores; a pass without the check serves only the forward facts
    _store(model, obs, scores_key if scores is not None else None)
    return obs


def model_scores(backend: Backend, model: Any) -> Callable[[Tensor], Tensor | None]:
    """Scores for callers without a :class:`~xplain.run.Run` (the listing, the summary): the
    model's output itself when it is one floating tensor, as ``explain(output=None)`` takes it;
    ``None`` (no check) otherwise."""
    B = backend

    def scores(x: Tensor) -> Tensor | None:
        out = call_model(B, model, x)
        return out if B.is_tensor(out) and "float" in B.dtype_name(out) else None
    return scores


def observe_model(backend: Backend, model: Any, x: Tensor, infos: Sequence[LayerInfo]) -> Observation:
    """:func:`observe` for callers without a run, with the scores of ``explain(output=None)``
    (:func:`model_scores`), so an explanation of the same model and input shape reuses it."""
    return observe(backend, model, x, infos, scores=model_scores(backend, model),
                   scores_key=selector_key(None))


def observe_run(run: "Run", *, need_feeds: bool = False) -> Observation:
    """:func:`observe` of ``run``'s model on its first sample, scored by ``run.forward`` (so
    ``output=`` applies)."""
    return observe(run.backend, run.model, run.inputs[:1], run.layers(), scores=run.forward,
                   scores_key=selector_key(run.output), need_feeds=need_feeds)


def peek_run(run: "Run") -> Observation | None:
    """The cached observation a client of ``run`` that needs no feeds would get, or ``None``
    (nothing runs)."""
    x = run.inputs[:1]
    return cached(run.model, structure_key(run.backend, run.layers(), x),
                  selector_key(run.output), need_feeds=False)


# ---- the pass -----------------------------------------------------------------------------------
def _broadcasts(small: tuple, shape: tuple) -> bool:
    """``small`` broadcasts to ``shape`` without adding axes in front beyond ``shape``'s."""
    if len(small) > len(shape):
        return False
    return all(a in (1, b) for a, b in zip(small[::-1], shape[::-1]))


def _floating(B: Backend, t: Tensor) -> bool:
    return "float" in B.dtype_name(t)


def _total(B: Backend, t: Tensor) -> float:
    return float(B.to_numpy(B.sum(t)))


def _is_view_of(B: Backend, a: Tensor, x: Tensor) -> bool:
    """``a`` is the model input ``x`` itself or a reshaped copy of it (``x.view``, Flatten)."""
    if a is x:
        return True
    if int(np.prod(B.shape(a))) != int(np.prod(B.shape(x))):
        return False
    return bool(B.all(B.reshape(a, B.shape(x)) == x))


@dataclass
class _Open:
    """A call whose pre-hook ran and whose post-hook has not yet."""

    info: LayerInfo
    first_inner: int
    inputs: tuple
    facts: tuple[TensorFacts | None, ...]
    input_nonneg: bool | None
    input_sum: float | None
    views_input: bool


class _Pass:
    """The hooks of one observed forward pass and what they collect. Every tensor seen stays
    referenced until the pass is over: Python reuses the ``id()`` of a freed tensor, which would
    make two tensors one token."""

    def __init__(self, B: Backend, model: Any, x: Tensor, infos: Sequence[LayerInfo], *,
                 scored: bool) -> None:
        self.B, self.model, self.x, self.scored = B, model, x, scored
        self.infos = infos
        self._seen: dict[int, tuple[Any, int]] = {}  # id(tensor) -> (tensor, token)
        self._live: list[Any] = []  # token -> the tensor the model goes on with
        self._layouts: dict[int, str | None] = {}  # token -> layout of a 4-D tensor
        self.calls: list[Call] = []
        self._outs: list[Any] = []  # per call: its output as the model goes on with it
        self._open: list[_Open] = []
        self.zeros: list[tuple[str, Any]] = []  # (layer name, zero leaf) of the feeds check
        self._prefix: dict[str, int] = {}  # layer name -> prefix tokens of a token output
        self._token_lengths: set[int] = set()  # T of every token sequence (N, T, C) seen so far
        self.feeds: dict[str, bool] = {}
        shape = B.shape(x)
        self.grid = (shape[2], shape[3]) if len(shape) == 4 else None
        self.input = self._facts(x)
        if self.grid is not None:
            self._layouts[0] = CHANNELS_FIRST  # xplain's image convention

    # ---- identity -------------------------------------------------------------------------------
    def _token(self, t: Any) -> int:
        hit = self._seen.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        token = len(self._live)
        self._seen[id(t)] = (t, token)
        self._live.append(t)
        return token

    def _alias(self, t: Any, token: int) -> None:
        """``t`` stands in for ``token``'s tensor from now on (same values: ``out + 0``)."""
        self._seen[id(t)] = (t, token)
        self._live[token] = t

    def _facts(self, t: Any) -> TensorFacts | None:
        B = self.B
        if not B.is_tensor(t):
            return None
        return TensorFacts(self._token(t), tuple(B.shape(t)), B.dtype_name(t))

    # ---- hooks ----------------------------------------------------------------------------------
    def _pre(self, info: LayerInfo) -> Callable[[Any, tuple], None]:
        B = self.B

        def hook(_layer: Any, inputs: tuple) -> None:
            inputs = tuple(inputs)
            facts = tuple(self._facts(t) for t in inputs)
            first = inputs[0] if inputs and B.is_tensor(inputs[0]) else None
            leaf = not info.has_children
            real = first is not None and _floating(B, first)
            self._open.append(_Open(
                info, len(self.calls), inputs, facts,
                bool(B.all(first >= 0)) if leaf and real and info.kind in SIGN_READERS else None,
                _total(B, first) if leaf and real and info.kind in ("relu", "activation") else None,
                leaf and first is not None and _is_view_of(B, first, self.x)))
        return hook

    def _post(self, info: LayerInfo) -> Callable[[Any, tuple, Any], Any]:
        B = self.B

        def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
            opened = self._close(info)
            leaf = not info.has_children
            index = len(self.calls)
            out = self._facts(output)
            shapes: tuple = ()
            if out is None and isinstance(output, (tuple, list)):
                shapes = tuple(tuple(B.shape(t)) if B.is_tensor(t) else None for t in output)
            real = out is not None and _floating(B, output)
            gates = () if leaf or out is None else self._gates(opened, index, output, out)
            uses = () if out is None else self._leaf_scale(info, opened, index, output) if leaf \
                else self._param_uses(info, opened, index, output)
            layout, reason, replaced = None, "", None
            # the projections inside an attention layer (paddle's q_proj ...) are not maps of
            # their own: the attention layer is one unit, as torch's functional projections are
            tokens = (out is not None and len(out.shape) == 3 and info.name
                      and info.kind not in TOKENLESS
                      and not any(o.info.kind == "attention" for o in self._open))
            if out is not None and (len(out.shape) == 4 or tokens) and info.name:
                if tokens:
                    layout, reason = token_layout(out.shape, self.grid)
                    if layout is not None:
                        self._prefix[info.name] = parse_tokens(layout)[0]
                        self._token_lengths.add(int(out.shape[1]))
                else:
                    layout, reason = self._layout(info, opened, out)
                hw = map_size(out.shape, layout)
                if self.scored and hw is not None and hw[0] * hw[1] > 1 \
                        and info.kind not in HEAD_POOLS:
                    if real:
                        z = B.with_grad(B.zeros_like(output))
                        replaced = output + z
                        self._alias(replaced, out.token)
                        self.zeros.append((info.name, z))
                    else:  # indices or masks: no gradient reaches them, no CAM layer
                        self.feeds[info.name] = False
            self.calls.append(Call(
                index, info.name, info.kind, leaf, opened.first_inner, opened.facts, out, shapes,
                opened.input_nonneg, opened.input_sum,
                _total(B, output) if leaf and real else None, opened.views_input, layout, reason,
                gates, replaced is not None, uses))
            self._outs.append(output if replaced is None else replaced)
            return replaced
        return hook

    def _close(self, info: LayerInfo) -> _Open:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].info is info:
                return self._open.pop(i)
        # a post-hook without a pre-hook (a framework calling only one): an empty record
        return _Open(info, len(self.calls), (), (), None, None, False)

    def _layout(self, info: LayerInfo, opened: _Open, out: TensorFacts) -> tuple[str | None, str]:
        """The layout of a 4-D output, remembered for the layers that read it: the layer's own
        evidence, the input's grid, else the layout of the tensor it returned (a container's
        last child's output, an in-place op) or, for a layout-keeping kind, of its input."""
        inherited = self._layouts.get(out.token)
        first = opened.facts[0] if opened.facts else None
        if inherited is None and info.kind in KEEPS_LAYOUT and first is not None:
            inherited = self._layouts.get(first.token)
        own = own_layout(self.B, info, out.shape)
        side = int(out.shape[2])
        if own[0] is None and side == out.shape[3] and side in self._token_lengths:
            # (N, heads, T, T) inside an attention computed from module calls: its size alone
            # would put it on the input's grid at some scale, but a map is not as wide as the
            # token sequences it was computed from are long
            self._layouts[out.token] = None
            return None, (f"its last two axes are both {side} long, the length of the token "
                          f"sequences before it: attention weights (token × token), not a map on "
                          f"the input's grid")
        layout, reason = decide_layout(*own, inherited, plausible_layouts(out.shape, self.grid))
        self._layouts[out.token] = layout
        return layout, reason

    def _gates(self, opened: _Open, index: int, out: Any, facts: TensorFacts) -> tuple[int, ...]:
        """The activation calls inside a container call whose output ``s`` satisfies
        ``out == x * s`` exactly (``x``: the container's input, ``s`` broadcast), checked when the
        container returns, before anything later can change ``x`` or ``out`` in place."""
        B = self.B
        x_facts = opened.facts[0] if opened.facts else None
        if x_facts is None or x_facts.shape != facts.shape:
            return ()
        x = opened.inputs[0]
        found = []
        for i in range(opened.first_inner, index):
            c = self.calls[i]
            s = c.output
            if c.kind not in GATE_KINDS or s is None or s.token in (x_facts.token, facts.token):
                continue
            if len(s.shape) == len(facts.shape) and all(a in (1, b) for a, b in
                                                        zip(s.shape, facts.shape)) \
                    and bool(B.all(x * self._outs[i] == out)):
                found.append(i)
        return tuple(found)

    def _param_uses(self, info: LayerInfo, opened: _Open, index: int, out: Any) -> tuple:
        """:attr:`Call.param_uses` of a container call, proven by exact equality on the values
        (the same float operations in the same order give the same bits)."""
        B = self.B
        own = {k: v for k, v in info.params.items() if v is not None}
        if not own or not opened.inputs or not B.is_tensor(opened.inputs[0]):
            return ()
        x = opened.inputs[0]
        found = []
        for pname, p in own.items():
            pshape = tuple(B.shape(p))
            for i in range(opened.first_inner, index):
                relation = self._relation(x, out, p, pshape, i)
                if relation is not None:
                    found.append((pname, relation, i))
                    break
        rest = {k: v for k, v in own.items() if k not in {f[0] for f in found}}
        if rest:
            # a prefix token proven alone may be part of an embedding with the rest (DeiT III:
            # ``[cls | u + pos]``): tried together, the embedding replaces its simple relation
            prefixes = {f[0]: own[f[0]] for f in found if f[1] == "prefix"}
            embedding = self._embedding({**rest, **prefixes}, opened, index)
            used = {e[0] for e in embedding}
            found = [f for f in found if f[0] not in used] + embedding
        return tuple(found)

    def _leaf_scale(self, info: LayerInfo, opened: _Open, index: int, out: Any) -> tuple:
        """:attr:`Call.param_uses` of a leaf of unknown kind with one parameter: ``("weight
        name", "scale", its own index)`` where its output is exactly its input times that
        parameter (timm's ``LayerScale``), proven on the values as for containers."""
        B = self.B
        own = {k: v for k, v in info.params.items() if v is not None}
        if info.kind != "other" or len(own) != 1 or not opened.inputs or not B.is_tensor(opened.inputs[0]):
            return ()
        (pname, p), = own.items()
        x = opened.inputs[0]
        oshape = tuple(B.shape(out))
        if x is out or tuple(B.shape(x)) != oshape or not _broadcasts(tuple(B.shape(p)), oshape):
            return ()  # in place (the input is gone) or not element-wise
        return ((pname, "scale", index),) if bool(B.all(x * p == out)) else ()

    def _embedding(self, params: dict, opened: _Open, index: int) -> list:
        """A token embedding (timm's ViT): a call inside the container reads
        ``t = [p_1 | … | p_m | u] + pos`` — prefix-token parameters, then the output ``u`` of an
        earlier call inside it, plus a position-embedding parameter over all tokens or over
        ``u``'s only. Found by exact equality; the relation ``embed:k:prefix names:pos name:
        all|grid`` names every parameter it uses (the ledger books ``Σ (t − [0 | u])·g``)."""
        from itertools import permutations

        B = self.B
        shapes = {k: tuple(B.shape(v)) for k, v in params.items()}
        for i in range(opened.first_inner, index):
            a = self.calls[i].first_input
            if a is None or len(a.shape) != 3 or a.shape[0] != 1:
                continue
            t = self._live[a.token]
            _, T, C = a.shape
            tokens = {k: s[1] for k, s in shapes.items() if len(s) == 3 and s[0] == 1 and s[2] == C}
            for j in range(opened.first_inner, i):
                u_facts = self.calls[j].output
                if u_facts is None or len(u_facts.shape) != 3 or u_facts.shape[2] != C:
                    continue
                k = T - u_facts.shape[1]
                if k < 0:
                    continue
                u = self._outs[j]
                for pos, cover in [(n, "all") for n, m in tokens.items() if m == T] + \
                        [(n, "grid") for n, m in tokens.items() if m == T - k and k > 0] + [(None, "")]:
                    # compared as the model computes them (u + pos, not t − pos: rounding)
                    signal = u if pos is None else u + params[pos][:, (k if cover == "all" else 0):]
                    if not bool(B.all(t[:, k:] == signal)):
                        continue
                    singles = [n for n in tokens if n != pos and tokens[n] <= k]
                    for r in range(len(singles) + 1):
                        for order in permutations(singles, r):
                            if sum(tokens[n] for n in order) != k or (k and not order):
                                continue
                            if k:
                                head = B.concat([params[n] for n in order], axis=1)
                                if pos is not None and cover == "all":
                                    head = head + params[pos][:, :k]
                                if not bool(B.all(t[:, :k] == head)):
                                    continue
                            spec = f"embed:{k}:{','.join(order)}:{pos or ''}:{cover}"
                            return [(n, spec, i) for n in (*order, *([pos] if pos else []))]
        return []

    def _relation(self, x: Any, out: Any, p: Any, pshape: tuple, i: int) -> str | None:
        B = self.B
        c = self.calls[i]
        u = self._outs[i]
        oshape = tuple(B.shape(out))
        if c.output is not None and c.output.shape == oshape and _broadcasts(pshape, oshape):
            scaled = u * p
            if bool(B.all(scaled == out)) or (tuple(B.shape(x)) == oshape and bool(B.all(scaled + x == out))):
                return "scale"
        a = c.first_input
        if a is None:
            return None
        t = self._live[a.token]
        if a.shape == tuple(B.shape(x)) and _broadcasts(pshape, a.shape) and bool(B.all(x + p == t)):
            return "add"
        if len(pshape) == len(a.shape) >= 2 and pshape[0] == 1 and pshape[1] < a.shape[1] \
                and pshape[2:] == a.shape[2:] and bool(B.all(t[:, :pshape[1]] == p)):
            return "prefix"
        return None

    # ---- the pass -------------------------------------------------------------------------------
    def run(self, scores: Callable[[Tensor], Tensor | None] | None, key: tuple | None,
            seed: int) -> Observation:
        """Hook every layer once, run the model (through ``scores`` when given), check the feeds,
        remove the hooks (also on error) and return the :class:`Observation`."""
        B = self.B
        handles = []
        hooked: set[int] = set()
        final: dict[int, float] = {}
        scored = False
        try:
            for info in self.infos:
                if id(info.module) in hooked:  # a module registered under two names is one layer
                    continue
                hooked.add(id(info.module))
                handles.append(B.add_forward_pre_hook(info.module, self._pre(info)))
                handles.append(B.add_forward_hook(info.module, self._post(info)))
            if scores is None:
                with B.no_grad():
                    call_model(B, self.model, self.x)
                final = self._final_sums()
            else:
                with B.enable_grad():
                    s = scores(self.x)
                    final = self._final_sums()
                    scored = s is not None and B.requires_grad(s)
                    if scored and self.zeros:
                        self._record_feeds(s, seed)
        finally:
            for h in handles:
                h.remove()
        obs = Observation(key, self.input, tuple(self.calls), MappingProxyType(final),
                          MappingProxyType(dict(self.feeds)), scored)
        self._seen.clear()  # the pass is over: the tensors may go
        self._live.clear()
        self._outs.clear()
        return obs

    def _final_sums(self) -> dict[int, float]:
        tokens = {c.output.token for c in self.calls if c.output_sum is not None}
        tokens |= {c.inputs[0].token for c in self.calls
                   if c.input_sum is not None and c.inputs and c.inputs[0] is not None}
        return {t: _total(self.B, self._live[t]) for t in sorted(tokens)}

    def _record_feeds(self, scores: Tensor, seed: int) -> None:
        """Which candidates the scores depend on: the gradient of ``sum(r * scores)`` (``r``
        standard normal; a plain sum would vanish under a softmax) at the zero leaves, for the
        candidates that ran once, from the last one back to the first that feeds. One backward
        pass per candidate tried, each only as deep as that candidate (the last one usually
        feeds: a pass through the head alone, instead of one through the whole network)."""
        B = self.B
        r = np.random.default_rng(seed).standard_normal(B.shape(scores)).astype(np.float32)
        score = B.sum(scores * B.asarray(r, like=scores))
        per_layer: dict[str, list[Any]] = {}
        for name, z in self.zeros:
            per_layer.setdefault(name, []).append(z)
        last: dict[str, int] = {}
        counts: dict[str, int] = {}
        for c in self.calls:
            last[c.name] = c.index
            counts[c.name] = counts.get(c.name, 0) + 1
        cands = [n for n in per_layer if counts[n] == 1]
        for name in sorted(cands, key=lambda n: last[n], reverse=True):
            grads = B.grad(score, per_layer[name], retain_graph=True)
            k = self._prefix.get(name, 0)  # a token sequence feeds through its grid, not its prefix
            self.feeds[name] = not all(B.all((g[:, k:] if k else g) == 0) for g in grads)
            if self.feeds[name]:
                return
