"""The borrowed-model guard: a model is left exactly as it was found (docs/architecture.md §6).

While a method runs, the model is put in evaluation mode with frozen parameters (so BatchNorm
statistics are not updated and no parameter gradients are computed); afterwards — also when the
method raises — train/eval flags, gradient flags, hooks, replaced parameters, buffers and
sub-modules are put back.

Two depths of checking:

* **shallow** (built-in methods, which are tested never to write to a model): parameter identity,
  storage pointers and the frameworks' in-place version counters. Costs nothing measurable.
* **deep** (plugin methods: code xplain has not seen): additionally a copy of every parameter's
  values, compared bit for bit afterwards and put back. This catches edits that bump no version
  counter (torch ``p.data.add_()``, paddle ``set_value``) and restores them exactly, at the cost of
  one copy of the weights per call.

When something changed, :class:`ModelModifiedError` says what, and whether the model's own forward
pass does it (checked on a deep copy of the model, never the user's): explanations of a model
that rewrites its weights as it runs are not defined.

Calls on one model are serialised by a per-model lock, so two threads explaining the same model
cannot interleave one call's preparation with the other's restoration.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import XplainError


class ModelModifiedError(XplainError, RuntimeError):
    """The model's parameters, buffers or sub-modules changed during an explanation."""


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()
_UNREFERENCEABLE = threading.RLock()  # models that cannot be weakly referenced share one lock


def model_lock(model: Any) -> threading.RLock:
    """The lock serialising xplain's calls on ``model`` (re-entrant: a method may call
    :func:`xplain.explain` on the same model, as SmoothGrad's wrapped methods do)."""
    with _LOCKS_LOCK:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
            return lock
        except TypeError:
            return _UNREFERENCEABLE


def _forward_modifies(backend: Any, model: Any, run_forward: Callable[[Any], Any] | None) -> bool | None:
    """Whether one plain forward pass changes a deep copy of ``model`` (``None``: could not
    tell, e.g. the model cannot be deep-copied)."""
    if run_forward is None:
        return None
    try:
        twin = backend.copy_model(model)
        snap = backend.snapshot(twin, deep=True)
        backend.prepare(twin)
        with backend.no_grad():
            run_forward(twin)
        return bool(backend.changed(twin, snap))
    except Exception:
        return None


@contextmanager
def borrowed(backend: Any, model: Any, *, deep: bool = False, who: str = "the method",
             run_forward: Callable[[Any], Any] | None = None) -> Iterator[None]:
    """Run the body with the model prepared for explanation, and restore it afterwards.

    Args:
        deep: keep and compare the parameters' values (see the module docstring).
        who: names the code that ran in messages (``"method 'x' of plugin 'p'"``).
        run_forward: ``run_forward(model)`` runs one plain forward pass of a model of this
            architecture; used only to tell, after a change, whether the model's own forward
            makes it.

    Raises:
        ModelModifiedError: after restoring what can be restored, if parameters, buffers or
            sub-modules changed (unless the body raised: its error is the one that propagates).
    """
    with model_lock(model):
        snap = backend.snapshot(model, deep=deep)
        failed = False
        try:
            backend.prepare(model)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            problems = backend.changed(model, snap)
            backend.restore(model, snap)
            if problems and not failed:
                raise _modified_error(backend, model, problems, deep, who, run_forward)


def _modified_error(backend: Any, model: Any, problems: list[str], deep: bool, who: str,
                    run_forward: Callable[[Any], Any] | None) -> ModelModifiedError:
    what = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
    restored = ("it has been put back exactly" if deep else
                "replaced objects were put back, but in-place changes of values could not be undone")
    by_forward = _forward_modifies(backend, model, run_forward)
    if by_forward:
        return ModelModifiedError(
            f"the model's own forward pass modifies it ({what}); an explanation of a model that "
            f"changes as it runs is not defined. Make forward() free of side effects on its "
            f"parameters (move weight updates or re-normalisation into training code), or "
            f"explain a copy: copy.deepcopy(model). ({restored})")
    if by_forward is None:
        suspect = ("either the model's forward pass or " + who + " did it (a deep copy of the "
                   "model to tell which could not be made)")
    else:
        suspect = f"{who} did it (a plain forward pass of the model does not)"
    return ModelModifiedError(
        f"the model was modified during the explanation: {what}; {suspect}. {restored}. If "
        f"the method is a plugin, fix it or block it with XPLAIN_DISABLE_PLUGINS; if it is "
        f"built in, please report this bug")
