"""The borrowed-model guard (ARCHITECTURE.md, decision 6).

While a method runs, the model is put in evaluation mode with frozen parameters (so BatchNorm
statistics are not updated and no parameter gradients are computed); afterwards — also when the
method raises — the train/eval flags, gradient flags and hook counts are put back. In-place
changes of parameters cannot be undone cheaply, so they are *detected* (via the frameworks'
in-place version counters) and reported as an error naming what changed. Paddle's
``Tensor.set_value`` does not bump that counter; no xplain method uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator

from .errors import XplainError


class ModelModifiedError(XplainError, RuntimeError):
    """A method changed the model's parameters in place (a bug in that method)."""


@contextmanager
def borrowed(backend: Any, model: Any) -> Iterator[None]:
    """Run the body with the model prepared for explanation, and restore it afterwards."""
    snap = backend.snapshot(model)
    failed = False
    try:
        backend.prepare(model)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        backend.restore(model, snap)
        problems = backend.changed(model, snap)
        if problems and not failed:
            raise ModelModifiedError("the model was modified during the explanation: "
                                     + "; ".join(problems[:5]) + " — please report this bug")
