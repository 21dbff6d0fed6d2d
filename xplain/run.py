"""The context a method runs in: model, inputs, backend, targets, randomness, batching budget.

Methods receive a :class:`Run` as their first argument. It is the only thing a method needs to
talk to the framework (through ``run.backend``) and it provides the shared mechanics every
method would otherwise rewrite: forwarding and validating the model's output, resolving
targets, the target score to differentiate, seeded randomness (docs/architecture.md §4),
chunking under a memory budget (§5) and progress bars.
"""
from __future__ import annotations

import re
import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Iterator

import numpy as np

from .backend import Backend, LayerInfo, Tensor, iter_chunks
from .checks import call_model, check_output, input_hint, select_output
from .observe import observe_run, peek_run
from .errors import InputError, LayerError, ModelError, OptionError
from .targets import check_range

_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(value: int | str) -> int:
    """``"2GB"`` / ``"512MB"`` / ``1e9`` → bytes (binary units)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise OptionError(f"memory_budget={value!r} is not a size; use e.g. '2GB', '512MB' or "
                          f"a positive number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# Activation bytes per sample depend only on the architecture and the input shape, so a probe's
# answer is kept per model (weakly: the model is borrowed, never kept alive) for later calls.
# Values: (per-sample bytes, largest single layer output per sample in bytes or None).
_BYTES_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, tuple[int, int | None]]]" = weakref.WeakKeyDictionary()

#: On CPU, the most bytes one layer output of a chunk should take. glibc's malloc serves larger
#: blocks by a fresh mmap each time (its dynamic threshold stops at 32 MiB on 64-bit), whose
#: pages the kernel faults in and zeroes again on every pass; smaller ones reuse freed memory.
#: Occlusion on resnet18 (441 windows): batches of 8 (26 MB outputs) took 0.69× (torch) and
#: 0.88× (paddle) the time of the memory budget's batches of ~90.
CPU_TENSOR_BYTES = 32 * 2**20


@dataclass
class MethodResult:
    """What a method may return instead of a bare tensor: attributions plus named extras
    (``relevance_sum``, ``delta``, ``layer_maps`` ...) that show up on the Explanation."""

    attributions: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


def progress_bar(enabled: bool | None, iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar, or ``None`` when disabled or tqdm is missing. ``enabled=None``: on a
    terminal, and in a notebook (where ``tqdm.auto`` draws a widget)."""
    if enabled is None:
        enabled = sys.stderr.isatty() or "ipykernel" in sys.modules
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(iterable, **kwargs)


class Run:
    """One explanation in progress. Created by :func:`xplain.explain`; handed to the method."""

    def __init__(self, backend: Backend, model: Any, inputs: Tensor, targets: np.ndarray | None,
                 *, seed: int | None = 0, max_batch: int | None = None,
                 memory_budget: int | str = "2GB", progress: bool | None = None,
                 method: str = "", output: Any = None) -> None:
        self.backend = backend
        self.model = model
        self.inputs = inputs
        self.method = method
        self.batch_size = backend.shape(inputs)[0]
        self._targets = targets
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.max_batch = max_batch
        self.memory_budget = parse_bytes(memory_budget)
        self.progress_enabled = progress
        #: which part of the model's raw output holds the class scores (``explain(output=...)``,
        #: see :func:`xplain.checks.select_output`); ``None``: the output is that tensor
        self.output = output
        self._layers: list[LayerInfo] | None = None
        #: the model's scores on :attr:`inputs`, numpy ``(batch, classes)``, when the targets
        #: were resolved from them (``target=None``): ``exp.scores`` without another forward
        self.scores: np.ndarray | None = None
        self._per_sample_bytes: int | None = None
        self._largest_bytes: int | None = None  # of one layer output, per sample
        self.num_classes: int | None = None

    # ---- model & targets --------------------------------------------------------------------
    def forward(self, x: Tensor, *, rows: int | None = None) -> Tensor:
        """``model(x)``'s class scores — the part :attr:`output` selects from a tuple, dict or
        object output — checked to be a finite ``(rows, classes)`` tensor (``rows``: the batch
        of ``x`` unless a method substitutes a larger batch inside the model, as Ablation-CAM
        does). Every method gets its scores here, so ``output=`` works for all of them. A
        framework error raised by the model's forward becomes an
        :class:`~xplain.errors.InputError` that names the input's shape and what the model
        expects."""
        B = self.backend
        out = select_output(B, call_model(B, self.model, x), self.output)
        shape = B.shape(out)
        if len(shape) != 2:
            chosen = "" if self.output is None else " (as selected by output=)"
            raise ModelError(f"the model's output{chosen} has shape {shape}; xplain explains "
                             f"class scores of shape (batch, classes) — flatten or select them "
                             f"in a wrapper model, or pick them from a tuple/dict output with "
                             f"output={input_hint(B, self.model, x)}")
        if shape[0] != (B.shape(x)[0] if rows is None else rows):
            hint = input_hint(B, self.model, x)
            raise (InputError if hint else ModelError)(
                f"the model returned {shape[0]} rows of scores for a batch of {B.shape(x)[0]} "
                f"inputs; make it return one row per sample (does it mix or reshape the "
                f"batch?){hint}")
        if shape[1] == 0:
            raise ModelError("the model's output has zero classes (shape "
                             f"{shape}); explain a model that returns at least one score per sample")
        check_output(B, self.model, x, out)
        self.num_classes = shape[1]
        return out

    def resolve_targets(self, output: Tensor | None = None) -> np.ndarray:
        """Targets as ``int64[batch]``; ``None`` targets become the argmax of ``output`` (the
        model's output on :attr:`inputs`, computed here if not given). Range-checked."""
        if self._targets is None:
            if output is None:
                with self.backend.no_grad():
                    output = self.forward(self.inputs)
            self.scores = self.backend.to_numpy(self.backend.stop_gradient(output))
            self._targets = self.scores.argmax(axis=1).astype(np.int64)
        elif self.num_classes is None:
            with self.backend.no_grad():
                self.forward(self.inputs[:1])
        check_range(self._targets, self.num_classes)
        return self._targets

    @property
    def given_targets(self) -> np.ndarray | None:
        """The targets as the user gave them (``None`` when each sample's argmax is wanted and
        not yet resolved). Lets a chunked method take the argmax per chunk instead of paying
        an extra forward pass."""
        return self._targets

    def record_argmax_targets(self, targets: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Record the per-sample argmax targets a chunked method took chunk by chunk (only
        when the user gave none), and the ``scores`` they were taken from, so reporting them
        costs no extra forward pass."""
        if self._targets is None:
            self._targets = np.asarray(targets, dtype=np.int64)
            self.scores = scores

    @property
    def targets(self) -> np.ndarray:
        """Resolved targets (runs one no-grad forward when they were ``None``)."""
        return self.resolve_targets()

    def target_score(self, output: Tensor, targets: np.ndarray | None = None) -> Tensor:
        """``sum_i output[i, targets[i]]``: the scalar whose gradient is every sample's own
        target gradient (samples do not interact in a model in eval mode)."""
        if not self.backend.requires_grad(output):
            raise ModelError(
                "the model's output does not depend differentiably on its input, so it has no "
                "gradient: part of its forward pass runs without gradient tracking (torch.no_grad "
                "/ paddle.no_grad, .detach(), numpy round trips, a compiled or static graph); "
                "remove that from forward(), or use a method that needs no gradient "
                "(occlusion, rise, scorecam, ablationcam)")
        t = self.resolve_targets(output) if targets is None else self._checked(targets, output)
        onehot = np.zeros(self.backend.shape(output), dtype=np.float32)
        onehot[np.arange(len(t)), t] = 1.0
        return self.backend.sum(output * self.backend.asarray(onehot, like=output))

    def target_outputs(self, output: Tensor, targets: np.ndarray | None = None) -> Tensor:
        """``output[i, targets[i]]`` as a ``(batch,)`` tensor."""
        t = self.resolve_targets(output) if targets is None else self._checked(targets, output)
        idx = self.backend.asarray(t.reshape(-1, 1), like=output, dtype="int64")
        return self.backend.reshape(self.backend.take_along_axis(output, idx, axis=1), (-1,))

    def _checked(self, targets: np.ndarray, output: Tensor) -> np.ndarray:
        """``targets`` range-checked against ``output``'s classes, so a chunked method that
        passes its own slice of :attr:`given_targets` needs no forward pass just to check them."""
        check_range(np.asarray(targets), self.backend.shape(output)[1])
        return targets

    def input_gradient(self, x: Tensor, targets: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """(d target score / d x, model output) for a batch ``x``."""
        B = self.backend
        with B.enable_grad():
            xg = B.with_grad(x)
            out = self.forward(xg)
            (g,) = B.grad(self.target_score(out, targets), xg, required=1)
        return g, out

    def derive(self, inputs: Tensor, targets: np.ndarray) -> "Run":
        """A run of the same model, budget and settings over another batch (e.g. SmoothGrad's
        noisy copies), with explicit targets and a seed derived from this run's seed and a
        counter (not drawn from :attr:`rng`, whose stream stays the method's own), so a wrapped
        random method stays reproducible. Layer and memory estimates are shared."""
        self._derived = getattr(self, "_derived", 0) + 1
        seed = None if self.seed is None else [int(self.seed), 0x5EED, self._derived]
        sub = Run(self.backend, self.model, inputs, np.asarray(targets, dtype=np.int64),
                  seed=seed, max_batch=self.max_batch, memory_budget=self.memory_budget,
                  progress=False, method=self.method, output=self.output)
        sub._layers, sub._per_sample_bytes, sub._largest_bytes, sub.num_classes = (
            self._layers, self._per_sample_bytes, self._largest_bytes, self.num_classes)
        return sub

    # ---- layers -----------------------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """The model's layers as neutral :class:`LayerInfo` (cached for this run)."""
        if self._layers is None:
            why = self.backend.hooks_unavailable(self.model)
            if why is not None:
                raise ModelError(f"method {self.method!r} works through layer hooks, but {why}. "
                                 f"Pure-gradient and perturbation methods (saliency, "
                                 f"input_x_gradient, integrated_gradients, smoothgrad, occlusion, "
                                 f"rise) can explain it as it is")
            self._layers = self.backend.layers(self.model)
        return self._layers

    def layer(self, spec: Any) -> LayerInfo:
        """Find a layer by dotted name (``"layer4"``, ``"features.35"``) or by object."""
        layers = self.layers()
        if isinstance(spec, str):
            for info in layers:
                if info.name == spec:
                    return info
            names = [i.name for i in layers if i.name]
            close = [n for n in names if spec.split(".")[-1] in n][:8]
            raise LayerError(f"the model has no layer named {spec!r}; "
                             + (f"similar names: {close}; " if close else "")
                             + "list them with xplain.layers(model)")
        for info in layers:
            if info.module is spec:
                return info
        raise LayerError(f"the layer object {type(spec).__name__} is not part of this model; pass "
                         f"a sub-layer of the model being explained, or its dotted name")

    # ---- batching & progress ----------------------------------------------------------------
    def _bytes_key(self) -> tuple:
        return tuple(self.backend.shape(self.inputs)[1:])

    @property
    def per_sample_bytes_known(self) -> bool:
        """Whether :meth:`per_sample_bytes` can answer without a forward pass: measured before,
        or the model's observation (:mod:`xplain.observe`) for this input shape is cached."""
        if self._per_sample_bytes is None:
            try:
                cached = _BYTES_CACHE.get(self.model, {}).get(self._bytes_key())
            except TypeError:  # a model that cannot be weakly referenced
                cached = None
            if cached is not None:
                self._per_sample_bytes, self._largest_bytes = cached
            elif self.backend.hooks_unavailable(self.model) is None:
                obs = peek_run(self)
                if obs is not None:
                    self.set_per_sample_bytes(*obs.leaf_output_bytes())
        return self._per_sample_bytes is not None

    def set_per_sample_bytes(self, activation_bytes: int, largest_bytes: int | None = None) -> None:
        """Record a measured activation size per sample (sum of layer outputs, in bytes) and
        the largest single layer output (bytes, if known), e.g. counted during a method's own
        first pass; they size later chunks of this and future runs on the same model and input
        shape."""
        inp = int(np.prod(self.backend.shape(self.inputs)[1:])) * 4
        self._per_sample_bytes = 2 * (int(activation_bytes) + inp)
        self._largest_bytes = None if largest_bytes is None else max(int(largest_bytes), inp)
        try:
            _BYTES_CACHE.setdefault(self.model, {})[self._bytes_key()] = (self._per_sample_bytes,
                                                                           self._largest_bytes)
        except TypeError:
            pass

    def per_sample_bytes(self) -> int:
        """Estimated bytes one sample needs through forward+backward: the sum of every leaf
        layer's output size (activations kept for backward) plus the input, times two (their
        gradients). From the model's observation (:func:`xplain.observe.observe_run`: one
        batch-1 pass, shared with LRP's canonisation and the CAM layer choice), once per model
        and input shape; a model whose layer hooks do not fire (compiled) is assumed to hold 64
        input-sized activations."""
        if not self.per_sample_bytes_known:
            if self.backend.hooks_unavailable(self.model) is not None:
                total = (64 * int(np.prod(self.backend.shape(self.inputs)[1:])) * 4, 0)
            else:
                total = observe_run(self).leaf_output_bytes()
            self.set_per_sample_bytes(*total)
        return self._per_sample_bytes

    @contextmanager
    def counting_output_bytes(self) -> Iterator[list[int]]:
        """Within the block, count the bytes of every leaf layer's output: ``[sum, largest]``
        (the estimates :meth:`set_per_sample_bytes` takes), e.g. from a pass a method needs
        anyway (Grad-CAM's first sample) instead of :meth:`per_sample_bytes`' observation."""
        B = self.backend
        total = [0, 0]

        def count(_layer: Any, _inputs: tuple, out: Any) -> None:
            if B.is_tensor(out):
                size = int(np.prod(B.shape(out))) * 4
                total[0] += size
                total[1] = max(total[1], size)

        if B.hooks_unavailable(self.model) is not None:
            # no layer hook fires in a compiled model: assume 64 input-sized activations
            total[:] = [64 * int(np.prod(B.shape(self.inputs)[1:])) * 4, 0]
            yield total
            return
        handles = [B.add_forward_hook(i.module, count) for i in self.layers() if not i.has_children]
        try:
            yield total
        finally:
            for h in handles:
                h.remove()

    def chunk_size(self, *, backward: bool = True) -> int:
        """How many samples to push through the model at once: ``max_batch`` if given, else as
        many as fit in ``memory_budget`` (halved need when no backward pass is taken), and on
        CPU no more than keep each layer output under :data:`CPU_TENSOR_BYTES`."""
        if self.max_batch is not None:
            return max(1, int(self.max_batch))
        need = self.per_sample_bytes() // (1 if backward else 2)
        return self.within_cpu_tensor_bytes(max(1, self.memory_budget // max(1, need)),
                                            self._largest_bytes)

    def within_cpu_tensor_bytes(self, size: int, largest_bytes: int | None,
                                limit: int = CPU_TENSOR_BYTES) -> int:
        """``size`` samples per pass, fewer on CPU where one layer output of ``largest_bytes``
        per sample would exceed ``limit`` bytes (default :data:`CPU_TENSOR_BYTES`; ``None``:
        not known, no cap)."""
        if largest_bytes and self.backend.is_cpu(self.inputs):
            return min(size, max(1, limit // largest_bytes))
        return size

    def chunks(self, total: int, *, backward: bool = True) -> Iterator[slice]:
        """Slices covering ``range(total)`` in chunks of :meth:`chunk_size`."""
        return iter_chunks(total, self.chunk_size(backward=backward))

    def progress(self, iterable: Iterable, *, total: int | None = None, desc: str = "") -> Iterable:
        """Wrap ``iterable`` in a tqdm bar when enabled (default: on a terminal, and in a
        notebook, where ``tqdm.auto`` draws a widget)."""
        bar = progress_bar(self.progress_enabled, iterable, total=total, desc=desc or self.method,
                           leave=False)
        return iterable if bar is None else bar
