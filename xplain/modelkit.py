"""What xplain needs to know about a framework *outside* a model's tensors: building its zoo's
classifiers, reading and loading weights, making input tensors on the model's device, and its
thread count. Each backend package registers a :class:`ModelKit`
(``registry.add_model_kit``); the command line, :func:`xplain.explain_folder`, the demo and the
examples ask the kit instead of branching on ``"torch"`` / ``"paddle"``.

A model is named by a *spec*: ``torchvision:resnet50`` and ``paddle:resnet50`` (a framework's
zoo; the prefix is the kit's ``zoo`` name), or ``package.module:factory`` (user code that returns
a model; the framework is inferred from what it returns). :func:`load_model` turns a spec and an
optional weights file into a model in eval mode.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BackendError, CheckpointError, OptionError
from .weights import check_state, file_kind, load_arrays, strip_prefix


class ModelKit(Protocol):
    """A framework's model-level operations (registered per backend; see module docstring)."""

    #: the backend's name (``"torch"``, ``"paddle"``)
    name: str
    #: the prefix of zoo specs (``"torchvision"``, ``"paddle"``)
    zoo: str
    #: file suffixes :meth:`read_weights` reads natively (besides safetensors and npz)
    weight_suffixes: tuple[str, ...]

    def zoo_names(self) -> list[str]:
        """The classifier constructors of the framework's zoo (``resnet50``, ...)."""

    def build_zoo(self, name: str, *, pretrained: bool = False) -> Any:
        """Zoo classifier ``name`` in eval mode: random weights, or with ``pretrained`` the
        framework's own ImageNet weights (downloaded by the framework; offline this raises a
        :class:`~xplain.errors.CheckpointError` that says so and what to pass instead)."""

    def state_shapes(self, model: Any) -> dict[str, tuple[int, ...]]:
        """``name → shape`` of every parameter and buffer a weights file must provide."""

    def load_state(self, model: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Load ``arrays`` (names as :meth:`state_shapes`, checked first) into ``model``."""

    def read_weights(self, path: str | Path) -> dict[str, np.ndarray]:
        """``name → array`` from a weights file, never running code from it."""

    def to_tensor(self, x: np.ndarray, model: Any = None) -> Any:
        """``x`` as a tensor on ``model``'s device (the CPU without a model; float32 stays
        float32)."""

    def move(self, model: Any, device: str) -> Any:
        """``model`` on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; paddle also ``"gpu:0"``),
        moved in place as the framework does; returns it."""

    def device(self, model: Any) -> str:
        """Where ``model``'s parameters live (``"cpu"``, ``"cuda:0"``, ``"gpu:0"``)."""

    def set_threads(self, n: int) -> None:
        """Use ``n`` CPU threads for the framework's kernels."""

    def transport_reducer(self, obj: Any) -> Any:
        """A pickle reduce tuple for a framework object that plain pickling would rebuild
        wrong in another process (a Ray worker receiving the model), else ``NotImplemented``."""

    # -- builders for xplain's demo, tests, examples and benchmarks -----------------------------
    # Weights here come in PyTorch's canonical layout (state-dict keys such as ``running_mean``,
    # Linear weights ``(out, in)``); a kit converts them to its own, so that a model built in
    # each framework from the same values computes the same function.

    def build_demo(self, num_classes: int, weights: Mapping[str, np.ndarray] | None) -> Any:
        """The demo CNN (:mod:`xplain.demo`), loaded with ``weights`` unless ``None``."""

    def build_small(self, name: str) -> Any:
        """A small test model: ``tutorial_cnn``, ``small_cnn`` or ``mlp``."""

    def build_vision(self, name: str, num_classes: int | None = None) -> Any:
        """Zoo constructor ``name`` with the constructor's random weights (no download)."""

    def fill_weights(self, model: Any, values: Callable[[str, tuple[int, ...]], np.ndarray]) -> Any:
        """Overwrite every parameter and buffer with ``values(canonical key, canonical
        shape)``; returns the model in eval mode."""

    def classifier_names(self) -> list[str]:
        """Every classifier constructor of the zoo (the zoo-wide tests' list)."""

    def build_calibrated(self, name: str, num_classes: int, seed: int, zero_biases: bool,
                         data: Sequence[np.ndarray]) -> Any:
        """Zoo constructor ``name`` (seeded initialisation) with BatchNorm statistics of the
        ``data`` batches, in eval mode; ``zero_biases`` zeroes every bias and running mean."""


def kit(name: str) -> ModelKit:
    """The registered :class:`ModelKit` of backend ``name`` (its framework imported now)."""
    from .plugins import registry

    entry = registry().model_kits.get(name)
    if entry is None:
        raise BackendError(f"no model kit is registered for backend {name!r}; installed: "
                           f"{', '.join(sorted(registry().model_kits)) or 'none'}")
    try:
        return entry.load()
    except ImportError as e:
        raise BackendError(f"the {name} backend's framework cannot be imported ({e}); install it: "
                           f"pip install 'xplain[{name}]'") from e


def kit_for(model: Any) -> ModelKit:
    """The :class:`ModelKit` of the framework ``model`` belongs to."""
    from .backends import backend_for

    return kit(backend_for(model).name)


def installed() -> list[str]:
    """Backends with a model kit whose framework is importable (for ``--framework`` choices)."""
    import importlib.util

    from .plugins import registry

    return sorted(n for n, e in registry().model_kits.items()
                  if e.module is None or importlib.util.find_spec(e.module) is not None)


def default_framework() -> str:
    """The first installed framework, ``torch`` before ``paddle``."""
    names = installed()
    if not names:
        raise BackendError("xplain needs PyTorch or PaddlePaddle: pip install 'xplain[torch]' "
                           "or pip install 'xplain[paddle]'")
    return "torch" if "torch" in names else names[0]


def _zoo_kits() -> dict[str, str]:
    from .plugins import registry

    return {e.zoo: name for name, e in registry().model_kits.items()}


def build(spec: str, *, pretrained: bool = False) -> tuple[Any, bool]:
    """The model a spec names (see module docstring) and whether it is a zoo model (zoo models
    get ImageNet pre-processing and class names by default); ``pretrained``: with the zoo's
    own downloaded weights (zoo specs only)."""
    prefix, sep, name = spec.partition(":")
    if not sep or not prefix or not name:
        raise OptionError(f"--model {spec!r}: write torchvision:NAME, paddle:NAME or "
                          f"package.module:factory")
    zoos = _zoo_kits()
    if prefix in zoos:
        k = kit(zoos[prefix])
        if name not in k.zoo_names():
            raise OptionError(f"{prefix} has no classifier {name!r}; it has: {', '.join(k.zoo_names())}")
        return k.build_zoo(name, pretrained=pretrained), True
    if pretrained:
        raise OptionError("--weights DEFAULT names a zoo's pretrained weights; give "
                          "--model torchvision:NAME or paddle:NAME, or a weights file")
    return _user_model(prefix, name), False


def _user_model(module_name: str, attr: str) -> Any:
    # the working directory first, as ``python -m`` does: users name their own modules
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise OptionError(f"--model {module_name}:{attr}: cannot import {module_name!r} ({e}); "
                          f"run from the folder that holds it or install it") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise OptionError(f"--model {module_name}:{attr}: {module_name} has no {attr!r}")
    model = factory() if callable(factory) and not _is_model(factory) else factory
    if not _is_model(model):
        raise OptionError(f"--model {module_name}:{attr} returned a {type(model).__name__}, not a "
                          f"torch.nn.Module or paddle.nn.Layer")
    return model


def _is_model(obj: Any) -> bool:
    from .backends import backend_for

    try:
        return backend_for(obj).is_model(obj)
    except BackendError:
        return False


def read_weights(path: str | Path, framework: str) -> dict[str, np.ndarray]:
    """``name → array`` from a weights file in any format ``framework``'s kit reads, with
    DataParallel's ``module.`` prefixes stripped. Safetensors, npz and paddle's pickles are
    read without importing a framework; a zip archive (PyTorch's format) by the kit."""
    if file_kind(path) != "zip":
        return strip_prefix(load_arrays(path))
    return strip_prefix(kit(framework).read_weights(path))


def load_state(model: Any, arrays: Mapping[str, np.ndarray], source: str = "the weights") -> None:
    """Load ``arrays`` into ``model`` after checking that they name exactly its parameters and
    buffers with the same shapes (the error lists missing, unexpected and misshapen names)."""
    k = kit_for(model)
    try:
        check_state(k.state_shapes(model), arrays)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    k.load_state(model, arrays)


def load_weights(model: Any, path: str | Path) -> None:
    """Load the weights file at ``path`` into ``model`` (see :func:`read_weights`,
    :func:`load_state`)."""
    load_state(model, read_weights(path, kit_for(model).name), str(path))


def load_model(spec: str, weights: str | Path | None = None) -> tuple[Any, bool]:
    """:func:`build` then the weights: a file, ``"DEFAULT"`` (the zoo's own pretrained
    download) or ``None`` (zoo models keep random weights: say so, this is rarely meant)."""
    model, zoo = build(spec, pretrained=weights == "DEFAULT")
    if weights is not None and weights != "DEFAULT":
        load_weights(model, weights)
    return model, zoo
