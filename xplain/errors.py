"""Exceptions raised by xplain.

Every error a user can cause is an :class:`XplainError` subclass whose message names the
problem *and* the fix, so that no bad input is ever answered with a silently wrong heat map.
"""
from __future__ import annotations


class XplainError(Exception):
    """Base class of every error xplain raises on purpose."""


class InputError(XplainError, ValueError):
    """The input batch has the wrong type, rank, dtype, or holds NaN/Inf."""


class TargetError(XplainError, ValueError):
    """The target is of the wrong type, length, or out of the model's class range."""


class OptionError(XplainError, TypeError):
    """An option a method does not accept, or a value it cannot use."""


class BackendError(XplainError, RuntimeError):
    """No backend fits the model/tensors, or the named backend cannot load."""


class LayerError(XplainError, LookupError):
    """A layer name/object is unknown, or a layer is unsupported by the requested rule."""


class PluginError(XplainError, RuntimeError):
    """A plugin is broken: unknown hook, duplicate name, or failed registration."""


class CheckpointError(InputError):
    """A weights file that is not plain arrays (code inside, unknown format, corrupt), whose
    reader is not installed, or that does not fit the model."""


class ModelError(XplainError, RuntimeError):
    """The model's output cannot be explained (not a 2-D score tensor, wrong framework...)."""


class ConservationWarning(UserWarning):
    """An LRP explanation whose relevance does not balance: the target output differs from the
    relevance plus what biases and stabilisers absorbed by more than the stated tolerance. The
    message names the numbers, the layers that absorbed most, and what to check."""
