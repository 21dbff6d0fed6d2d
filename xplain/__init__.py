"""xplain: explainability for deep image classifiers, one algorithm for every framework.

>>> import xplain
>>> exp = xplain.explain(model, images, method="saliency")   # torch or paddle model
>>> exp.attributions   # same framework, device and shape as ``images``

This package never imports a framework at import time; backends load when a model or tensor
of theirs is first seen.
"""
from __future__ import annotations

from .api import Explanation, explain, methods, predict
from .backend import Backend, LayerInfo
from .backends import backend_for, backends
from .layers import LayerSummary, layers
from .errors import (BackendError, CheckpointError, ConservationWarning, InputError, LayerError, ModelError, OptionError, PluginError,
                     TargetError, XplainError)
from .plugins import PluginWarning, hookimpl
from .run import MethodResult, Run
from .summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "predict", "explain_folder",
    "Backend", "BackendError", "CheckpointError", "LayerSummary", "layers", "Explanation", "InputError", "LayerError", "LayerInfo",
    "MethodResult", "ModelError", "OptionError", "PluginError", "PluginWarning", "Run", "TargetError",
    "ConservationWarning", "Summary", "XplainError", "backend_for", "backends", "explain", "hookimpl", "methods", "summary", "__version__",
]


def __getattr__(name: str):
    if name == "explain_folder":  # imports OpenCV-heavy job code on first use only
        from .jobs import explain_folder

        return explain_folder
    raise AttributeError(f"module 'xplain' has no attribute {name!r}")
