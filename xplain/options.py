"""Checking a method's options against its signature: one validation layer for every method.

A method's keyword-only parameters are its options, and their type hints say what each accepts.
:func:`check_options` reads those hints, so built-in and plugin methods get the same checks and
the same messages without writing any:

* ``int`` refuses ``bool``, floats (``7.9`` is never truncated to 7) and strings;
* ``float`` accepts ints, refuses ``bool``, strings and NaN/Inf;
* ``bool`` accepts only ``True`` / ``False``;
* ``Literal["a", "b"]`` is an enumeration; ``X | None`` admits ``None``;
* ``Sequence[int]`` wants a list/tuple/array of ints (not a string);
* ``Annotated[T, Range(...)]`` adds bounds (aliases below: :data:`PositiveInt`,
  :data:`Probability` ...).

Hints that are ``Any``, missing, or name a class this module cannot resolve are not checked (the
method then checks the value itself). Plugins import the aliases from here::

    from xplain.options import PositiveInt

    def my_method(run, *, samples: PositiveInt = 8): ...
"""
from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np

from .errors import OptionError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option, used as ``Annotated[int, Range(1)]``.

    ``low``/``high`` of ``None`` leave that side open-ended; ``low_open``/``high_open`` make the
    bound exclusive (``Range(0, 1, low_open=True)`` is ``(0, 1]``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True

    def describe(self) -> str:
        lo = "-∞" if self.low is None else f"{self.low:g}"
        hi = "∞" if self.high is None else f"{self.high:g}"
        return f"in {'(' if self.low_open or self.low is None else '['}{lo}, {hi}" \
               f"{')' if self.high_open or self.high is None else ']'}"


PositiveInt = Annotated[int, Range(1)]
"""An int ``>= 1`` (counts: steps, samples, masks)."""
NonNegativeInt = Annotated[int, Range(0)]
"""An int ``>= 0``."""
PositiveFloat = Annotated[float, Range(0, low_open=True)]
"""A finite float ``> 0`` (step sizes, stabilisers)."""
NonNegativeFloat = Annotated[float, Range(0)]
"""A finite float ``>= 0`` (noise levels)."""
Probability = Annotated[float, Range(0, 1, low_open=True)]
"""A float in ``(0, 1]``."""
Decay = Annotated[float, Range(0, 1, high_open=True)]
"""A float in ``[0, 1)`` (moment decay rates)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_float(v: Any) -> bool:
    return (isinstance(v, (numbers.Real, np.floating, np.integer))
            and not isinstance(v, (bool, np.bool_)))


def _args(hint: Any) -> tuple:
    return typing.get_args(hint)


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint)


def _is_union(hint: Any) -> bool:
    return _origin(hint) is Union or isinstance(hint, types.UnionType)


def describe(hint: Any) -> str:
    """Words for what ``hint`` accepts, for error messages."""
    origin = _origin(hint)
    if origin is Annotated:
        base, *meta = _args(hint)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return describe(base) + (f" {' and '.join(ranges)}" if ranges else "")
    if _is_union(hint):
        return " or ".join(describe(a) for a in _args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in _args(hint))
    if hint is type(None):
        return "None"
    if hint is bool:
        return "a bool (True or False)"
    if hint is int:
        return "an int"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if origin in (list, tuple, Sequence) or hint in (list, tuple, Sequence):
        inner = _args(hint)
        if not inner:
            return "a sequence"
        words = describe(inner[0])
        for one, many in (("an int", "ints"), ("a finite number", "numbers"), ("a string", "strings")):
            if words.startswith(one):
                return f"a sequence of {many}{words[len(one):]}"
        return f"a sequence of {words}"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a dict"
    return getattr(hint, "__name__", str(hint))


def problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (``None`` when it fits or cannot be checked)."""
    if hint is Any or hint is None:
        return None
    origin = _origin(hint)
    if origin is Annotated:
        base, *meta = _args(hint)
        why = problem(value, base)
        if why is not None or value is None:
            return why
        for m in meta:
            if isinstance(m, Range) and _is_float(value) and not m.contains(float(value)):
                return f"must be {describe(base)} {m.describe()}"
        return None
    if _is_union(hint):
        members = _args(hint)
        if value is None and type(None) in members:
            return None
        whys = [problem(value, a) for a in members if a is not type(None)]
        if any(w is None for w in whys):
            return None
        # a value of nearly the right kind says what is off about it; else list the kinds
        for mark in ("not a bool", "never rounded", "must be in", "finite"):
            specific = [w for w in whys if w and mark in w]
            if specific:
                return specific[0]
        return f"must be {describe(hint)}"
    if origin is Literal:
        allowed = _args(hint)
        return None if any(value == a and type(value) is type(a) for a in allowed) \
            else f"must be {describe(hint)}"
    if hint is type(None):
        return None if value is None else "must be None"
    if hint is bool:
        return None if isinstance(value, (bool, np.bool_)) else "must be a bool (True or False)"
    if hint is int:
        if _is_int(value):
            return None
        if isinstance(value, (bool, np.bool_)):
            return "must be an int, not a bool"
        return "must be an int" + (f" (got the float {value!r}; it is never rounded)"
                                   if isinstance(value, (float, np.floating)) else "")
    if hint is float:
        if not _is_float(value):
            return "must be a number" + (", not a bool" if isinstance(value, (bool, np.bool_)) else "")
        return None if math.isfinite(float(value)) else "must be finite (not NaN or Inf)"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (list, tuple, Sequence) or hint in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            return f"must be {describe(hint)}"
        inner = _args(hint)
        if inner and inner[-1] is not Ellipsis:
            for item in value:
                why = problem(item, inner[0])
                if why is not None:
                    return f"must be {describe(hint)}: item {item!r} {why}"
        return None
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return None if isinstance(value, Mapping) else "must be a dict"
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"must be {describe(hint)}"
    return None


def option_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of ``fn``'s parameters (``Annotated`` kept); a hint that cannot be
    resolved (a name the plugin's module does not define) is left out, i.e. not checked."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        hints: dict[str, Any] = {}
        namespace = getattr(fn, "__globals__", {})
        for name, raw in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = eval(raw, namespace) if isinstance(raw, str) else raw  # noqa: S307
            except Exception:
                continue
        return hints


def check_options(method: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise :class:`~xplain.errors.OptionError` for the first option of ``options`` that does not
    fit ``fn``'s type hint, naming the method, the option, what it takes and its default."""
    hints = option_hints(fn)
    params = inspect.signature(fn).parameters
    for name, value in options.items():
        if name not in hints:
            continue
        why = problem(value, hints[name])
        if why is not None:
            default = params[name].default if name in params else inspect.Parameter.empty
            example = "" if default is inspect.Parameter.empty else f" (its default is {default!r})"
            raise OptionError(f"{method}: option {name}={value!r} {why}{example}; pass "
                              f"{describe(hints[name])}")
