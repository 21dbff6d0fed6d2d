"""The public entry point: :func:`explain` and the :class:`Explanation` it returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import backend_for
from .errors import InputError, OptionError
from .guard import borrowed
from .plugins import registry
from .run import MethodResult, Run
from .targets import parse_targets

_RUN_OPTIONS = ("seed", "max_batch", "memory_budget", "progress")


@dataclass
class Explanation:
    """The result of :func:`explain`.

    Attributes:
        attributions: tensor of the model's framework and device; shape of the input unless the
            method documents otherwise (CAM maps are ``(N, H, W)``).
        method: the method's registered name.
        targets: the explained class per sample, ``int64[N]``.
        backend: the backend's name (``"torch"``, ``"paddle"``).
        extras: method-specific results (``relevance_sum``, ``delta``, ``outputs`` ...), also
            readable as attributes: ``exp.relevance_sum``.
    """

    attributions: Any
    method: str
    targets: np.ndarray
    backend: str
    extras: dict[str, Any] = field(default_factory=dict)
    _backend_obj: Any = field(default=None, repr=False)

    def numpy(self) -> np.ndarray:
        """A numpy copy of :attr:`attributions` (for plotting and files)."""
        return self._backend_obj.to_numpy(self.attributions)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"Explanation has no attribute {name!r}; extras of this method: "
                             f"{sorted(extras)}")


def methods() -> list[str]:
    """Names of every registered attribution method (built-in and from plugins)."""
    return sorted(registry().methods)


def validate_inputs(backend: Any, inputs: Any) -> None:
    """Refuse inputs that would give meaningless attributions (see ARCHITECTURE decision 7)."""
    if not backend.is_tensor(inputs):
        raise InputError(f"inputs must be a {backend.name} tensor, got {type(inputs).__name__}; "
                         f"convert it first (e.g. torch.as_tensor / paddle.to_tensor)")
    shape = backend.shape(inputs)
    if len(shape) < 2:
        raise InputError(f"inputs have shape {shape}; xplain needs a batch dimension first "
                         f"(e.g. x[None] / x.unsqueeze(0) for a single image)")
    if shape[0] == 0:
        raise InputError("inputs hold an empty batch; pass at least one sample")
    dtype = backend.dtype_name(inputs)
    if not dtype.startswith(("float", "bfloat")):
        raise InputError(f"inputs have dtype {dtype}; gradients need floating point — convert "
                         f"with .float() / .astype('float32') (and normalise as in training)")
    if not backend.all(backend.isfinite(inputs)):
        raise InputError("inputs contain NaN or Inf; clean them (e.g. nan_to_num) before "
                         "explaining — attributions of non-finite inputs are meaningless")


def explain(model: Any, inputs: Any, method: str = "saliency", target: Any = None, *,
            backend: str | None = None, seed: int | None = 0, max_batch: int | None = None,
            memory_budget: int | str = "2GB", progress: bool | None = None,
            **options: Any) -> Explanation:
    """Explain ``model``'s prediction on ``inputs`` with an attribution ``method``.

    Args:
        model: ``torch.nn.Module`` or ``paddle.nn.Layer`` (any registered backend's model)
            returning class scores of shape ``(N, classes)``. Borrowed: left exactly as found.
        inputs: float tensor ``(N, ...)`` of the same framework, typically ``(N, C, H, W)``.
        method: a name from :func:`methods`.
        target: class to explain: ``None`` (each sample's argmax), an int, or one int per sample.
        backend: force a backend by name instead of detecting it from the model's type.
        seed: seed of the numpy generator that draws all randomness (noise, masks, baselines).
        max_batch / memory_budget: bound on samples per forward pass for multi-pass methods.
        progress: show a progress bar (default: only when stderr is a terminal).
        **options: method options; unknown names are an error, never ignored.

    Returns:
        An :class:`Explanation` whose ``attributions`` are a tensor of the model's framework.
    """
    reg = registry()
    if method not in reg.methods:
        raise OptionError(f"unknown method {method!r}; available: {', '.join(sorted(reg.methods))}")
    entry = reg.methods[method]
    if not entry.accepts_any_option:
        unknown = sorted(set(options) - set(entry.options))
        if unknown:
            raise OptionError(f"method {method!r} has no option(s) {unknown}; its options are "
                              f"{list(entry.options) or 'none'} (plus {list(_RUN_OPTIONS)})")
    B = backend_for(model, name=backend)
    if not B.is_model(model):
        raise InputError(f"model must be a {B.name} model, got {type(model).__name__}")
    validate_inputs(B, inputs)
    targets = parse_targets(target, B.shape(inputs)[0], B)
    run = Run(B, model, inputs, targets, seed=seed, max_batch=max_batch,
              memory_budget=memory_budget, progress=progress, method=method)
    with borrowed(B, model):
        result = entry.fn(run, **options)
        resolved = run.resolve_targets()
    if not isinstance(result, MethodResult):
        result = MethodResult(result)
    return Explanation(result.attributions, method, resolved, B.name, dict(result.extras), B)
