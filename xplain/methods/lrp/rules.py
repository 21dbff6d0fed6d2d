"""LRP rules as data.

A rule says how relevance ``R_y`` at a layer's output is distributed onto its input. Every rule
here is written in the *generic LRP step* of Montavon et al., "Layer-Wise Relevance Propagation:
An Overview" (2019), eq. (10)::

    R_a = sum_k  a_k ⊙ ρ_k(W)ᵀ · (c_g · R_y / stab(z_g))      with  z_g = Σ_k sign_k · (ρ_k(W) a_k + ρ_k(b))

i.e. a rule is a set of *groups* (each with a denominator ``z_g`` and a coefficient ``c_g``) of
*terms* (an input modifier ``a → a_k``, a parameter modifier ``ρ_k`` for weight and bias, and a
sign). ``emit.py`` turns this data into a forward replacement of the layer's output
``y' = sg(y) + Σ_g (z_g − sg(z_g)) ⊙ sg(c_g · y / stab(z_g))`` (value exactly ``y``, gradient
carries the rule; docs/architecture.md §3), so no rule needs a class per framework.

Four kinds of rules:

* ``gradient`` — no replacement at all (LRP-0 for linear layers, exact for ReLU/pooling/sums).
* ``epsilon`` — the layer's own output is the denominator: no extra convolution needed.
* ``pass`` — element-wise layers: relevance passes unchanged (``R_a = R_y``), less the share of
  a constant offset ``f(0)``, which is absorbed like a bias.
* ``gate`` — a multiplicative gate (squeeze-and-excitation): its output is a constant weight
  of the signal it multiplies, so no relevance enters the gate's branch.
* ``layernorm`` — LayerNorm with its normaliser ``σ`` taken as a constant (``constant_std``):
  what is left is a centring (linear, conservative) and an affine map whose bias absorbs.
* ``attention`` — a multi-head attention layer re-evaluated by :mod:`.transformer` with its
  softmax weights as constants (``cp``) or with AttnLRP's rules (``attnlrp``).
* ``terms`` — modified weights/inputs (γ, z⁺, αβ); and *explicit* term rules (flat, w², z^B)
  whose inputs are not the layer input (ones, box bounds) and which are therefore only possible
  where the relevance of the input is read directly: the first layer.

Parameter modifiers are named data (``"identity"``, ``"positive"``, ``"negative"``,
``"gamma+"``, ``"gamma-"``, ``"ones"``, ``"square"``) evaluated with backend ops only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import OptionError

#: Names accepted wherever a rule is expected (``rules={"conv": "gamma"}``).
RULE_NAMES = ("zero", "gradient", "epsilon", "pass", "gate", "gamma", "zplus", "alpha1beta0", "alphabeta",
              "alpha2beta1", "flat", "wsquare", "zbox", "constant_std", "cp", "attnlrp")

#: Term input modifiers; ``low`` / ``high`` / ``identity-high`` / ``high-low`` use the z^B bounds.
INPUT_MODIFIERS = ("identity", "positive", "negative", "ones", "low", "high", "identity-high", "high-low")
_PARAM_MODS = ("identity", "positive", "negative", "gamma+", "gamma-", "gamma*positive", "gamma*negative",
               "ones", "square")


@dataclass(frozen=True)
class Term:
    """One contribution ``sign · (ρ(W) · inputs(a) + ρ(b))`` to a rule's denominator.

    Attributes:
        inputs: input modifier: ``identity`` / ``positive`` (a⁺) / ``negative`` (a⁻) for rules of
            the ``a ⊙ c`` form; ``ones`` / ``low`` / ``high`` / ``identity-high`` (a − h) /
            ``high-low`` (h − l, with the z^B bounds) for explicit first-layer rules.
        weight: parameter modifier applied to the weight.
        bias: parameter modifier applied to the bias, or ``None`` for "no bias in this term".
        sign: ``+1`` or ``-1`` (z^B subtracts its bound terms).
    """

    inputs: str
    weight: str
    bias: str | None
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator ``z_g``; the group's relevance is scaled by ``coefficient``
    (α and −β of the αβ rule) and, with ``outputs``, restricted to outputs of that sign (γ)."""

    terms: tuple[Term, ...]
    coefficient: float = 1.0
    outputs: str | None = None  # "positive"/"negative": the group applies only to such outputs


@dataclass(frozen=True)
class Rule:
    """An LRP rule (see module docstring).

    Attributes:
        name: rule name (``"gamma"`` ...), for messages and ``extras["rules"]``.
        kind: ``gradient`` | ``epsilon`` | ``pass`` | ``gate`` | ``layernorm`` | ``attention`` |
            ``terms``.
        groups: for ``terms`` rules, the groups of terms.
        stabilizer: ε added to denominators with their sign (``0`` counts as positive).
        explicit: relevance is not ``input ⊙ gradient`` (flat, w², z^B): first layer only.
        gamma: γ used by the ``gamma±`` parameter modifiers.
        low / high: z^B box bounds (scalars or per-channel sequences), else ``None``.
    """

    name: str
    kind: str
    groups: tuple[Group, ...] = ()
    stabilizer: float = 1e-6
    explicit: bool = False
    gamma: float = 0.0
    low: Any = None
    high: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})" if args else self.name

    @property
    def needs_params(self) -> bool:
        """Whether the rule evaluates the layer with modified parameters (conv/linear/BN only)."""
        return self.kind == "terms"


# ---- constructors -----------------------------------------------------------------------------
def _nonneg(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"LRP {name}={value!r} is not a number; pass a float >= 0") from None
    if not np.isfinite(v) or v < 0:
        raise OptionError(f"LRP {name}={value!r} must be a finite number >= 0")
    return v


def zero() -> Rule:
    """LRP-0 (Bach et al., "On Pixel-Wise Explanations ...", PLoS ONE 2015): the plain gradient;
    on ReLU networks ``input ⊙ gradient``."""
    return Rule("zero", "gradient")


def epsilon(epsilon: float = 1e-6) -> Rule:
    """LRP-ε: ``R_a = a ⊙ Wᵀ(R_y / (z + ε·sign z))``; ``epsilon=0`` is LRP-0 with a 0/0 := 0 guard.
    Montavon et al. (2019), eq. (5)."""
    eps = _nonneg("epsilon", epsilon)
    if eps == 0:  # exactly LRP-0: the plain gradient (0/0 := gradient at zero outputs)
        return Rule("epsilon", "gradient", params={"epsilon": 0.0})
    return Rule("epsilon", "epsilon", (Group((Term("identity", "identity", "identity"),)),),
                stabilizer=eps, params={"epsilon": eps})


def pass_(stabilizer: float = 1e-6) -> Rule:
    """Pass: for element-wise layers (activations, standalone BatchNorm): ``R_a = R_y``."""
    return Rule("pass", "pass", stabilizer=_nonneg("stabilizer", stabilizer))


def gate() -> Rule:
    """Gate: the layer's output is a constant in the backward pass (Arras et al., "Explaining
    Recurrent Neural Network Predictions in Sentiment Analysis", WASSA 2017): in ``x * s`` all
    relevance goes to the signal ``x`` (``R_x = x·s·R/(x·s) = R``), none to the gate ``s``."""
    return Rule("gate", "gate")


def gamma(gamma: float = 0.25, stabilizer: float = 1e-6) -> Rule:
    """LRP-γ (Montavon et al. 2019, eq. 7), generalised to inputs and outputs of either sign
    (Andéol et al., "Learning Domain Invariant Representations by Joint Wasserstein Distance
    Minimization", 2021; as in Zennit): positive contributions are amplified by γ.

    Where the output is positive, ``z⁺ = a⁺(W + γW⁺) + a⁻(W + γW⁻) + b + γb⁺``; where it is
    negative, ``z⁻ = a⁺(W + γW⁻) + a⁻(W + γW⁺) + b + γb⁻``. For non-negative inputs and positive
    outputs this is the original ``(W + γW⁺)``.
    """
    g = _nonneg("gamma", gamma)
    pos = Group((Term("positive", "gamma+", "gamma+"), Term("negative", "gamma-", None)), 1.0, "positive")
    neg = Group((Term("positive", "gamma-", "gamma-"), Term("negative", "gamma+", None)), 1.0, "negative")
    return Rule("gamma", "terms", (pos, neg), stabilizer=_nonneg("stabilizer", stabilizer),
                gamma=g, params={"gamma": g})


def alphabeta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> Rule:
    """LRP-αβ (Bach et al. 2015): positive contributions ``(a·w)⁺`` weighted by α, negative ones
    by −β, each normalised by its own sum (bias parts ``b⁺`` / ``b⁻`` included). α − β = 1."""
    a, b = _nonneg("alpha", alpha), _nonneg("beta", beta)
    if abs(a - b - 1.0) > 1e-9:
        raise OptionError(f"LRP alpha-beta needs alpha - beta = 1 (conservation), got alpha={alpha}, "
                          f"beta={beta}; e.g. alpha=2, beta=1 or alpha=1, beta=0")
    pos = Group((Term("positive", "positive", "positive"), Term("negative", "negative", None)), a)
    groups: tuple[Group, ...] = (pos,)
    if b > 0:
        groups += (Group((Term("positive", "negative", "negative"),
                          Term("negative", "positive", None)), -b),)
    name = "zplus" if b == 0 else "alphabeta"
    return Rule(name, "terms", groups, stabilizer=_nonneg("stabilizer", stabilizer),
                params={} if b == 0 else {"alpha": a, "beta": b})


def zplus(stabilizer: float = 1e-6) -> Rule:
    """LRP-z⁺ = α1β0 (Montavon et al., "Explaining nonlinear classification decisions with deep
    Taylor decomposition", 2017), for inputs of either sign: ``a⁺W⁺ + a⁻W⁻``."""
    return alphabeta(1.0, 0.0, stabilizer)


def flat(stabilizer: float = 1e-6) -> Rule:
    """Flat (Lapuschkin et al., "Unmasking Clever Hans predictors", 2019): relevance spread
    uniformly over each output's receptive field (inputs and weights taken as ones, no bias)."""
    return Rule("flat", "terms", (Group((Term("ones", "ones", None),)),),
                stabilizer=_nonneg("stabilizer", stabilizer), explicit=True)


def wsquare(stabilizer: float = 1e-6) -> Rule:
    """w² (Montavon et al. 2017): relevance spread in proportion to squared weights (bias
    squared in the denominator)."""
    return Rule("wsquare", "terms", (Group((Term("ones", "square", "square"),)),),
                stabilizer=_nonneg("stabilizer", stabilizer), explicit=True)


def zbox(low: Any = None, high: Any = None, stabilizer: float = 1e-6) -> Rule:
    """z^B (Montavon et al. 2017) for inputs bounded by ``low <= x <= high`` (scalars or one value
    per channel, in the *model input's* units, i.e. after normalisation):
    ``z = Wx + b − (W⁺l + b⁺) − (W⁻h + b⁻)``, ``R = x⊙Wᵀs − l⊙W⁺ᵀs − h⊙W⁻ᵀs``, ``s = R_y/z``.

    Stored in the equal two-term form (``W⁻ = W − W⁺``, ``b − b⁺ − b⁻ = 0``)
    ``z = W(x − h) + W⁺(h − l)``, ``R = (x − h)⊙Wᵀs + (h − l)⊙W⁺ᵀs``: two convolutions
    forward and backward instead of three."""
    if low is None or high is None:
        raise OptionError("the zbox rule needs the input bounds: pass low= and high= (scalars or one "
                          "value per channel, in normalised input units, e.g. low=-2.12, high=2.64)")
    lo, hi = _bound("low", low), _bound("high", high)
    if lo.shape == hi.shape and np.any(lo > hi):
        raise OptionError(f"zbox needs low <= high, got low={low}, high={high}")
    terms = (Term("identity-high", "identity", None), Term("high-low", "positive", None))
    return Rule("zbox", "terms", (Group(terms),), stabilizer=_nonneg("stabilizer", stabilizer),
                explicit=True, low=lo, high=hi, params={"low": _show(lo), "high": _show(hi)})


def constant_std() -> Rule:
    """LayerNorm with its normaliser as a constant (Ali et al., "XAI for Transformers: Better
    Explanations through Conservative Propagation", ICML 2022; the AttnLRP LayerNorm rule of
    Achtibat et al. 2024): ``y = (x − mean(x)) / sg(σ) · w + b``. The centring is a linear map
    without bias, so relevance through it is conserved; ``b`` absorbs its share."""
    return Rule("constant_std", "layernorm")


def cp() -> Rule:
    """Conservative propagation through attention (Ali et al., ICML 2022): the softmax weights
    ``A`` are constants, so ``A·V`` is linear in the values and no relevance enters queries and
    keys; the projections take LRP-0."""
    return Rule("cp", "attention", stabilizer=0.0, params={"softmax": "constant"})


def attnlrp() -> Rule:
    """AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
    Transformers", ICML 2024): the softmax by its Taylor expansion at the input
    (``R_x = x ⊙ (R_s − s·Σ R_s)``: input times the softmax's own gradient, the rest absorbed),
    the bilinear products ``Q·Kᵀ`` and ``A·V`` by the uniform rule (half the relevance to each
    factor), the projections by LRP-0 (as LXT's)."""
    return Rule("attnlrp", "attention", stabilizer=0.0, params={"softmax": "taylor"})


def _bound(name: str, value: Any) -> np.ndarray:
    """A scalar or per-channel bound as float32 numpy (``(C,)``, ``(1, C, 1, 1)`` ... accepted)."""
    for attr in ("detach", "cpu", "numpy"):  # a framework tensor
        if hasattr(value, attr) and not isinstance(value, np.ndarray):
            value = getattr(value, attr)()
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise OptionError(f"zbox {name}={value!r} must be a number or one number per channel") from None
    if arr.ndim > 1 and arr.size == max(arr.shape):
        arr = arr.reshape(-1)
    if arr.ndim > 1 or not np.all(np.isfinite(arr)):
        raise OptionError(f"zbox {name} must be a finite scalar or a 1-D sequence with one value per "
                          f"input channel, got shape {arr.shape}")
    return arr


def _show(arr: np.ndarray) -> Any:
    return float(arr) if arr.ndim == 0 else [float(v) for v in arr]


_FACTORIES = {
    "zero": lambda o: zero(), "gradient": lambda o: zero(),
    "epsilon": lambda o: epsilon(o.get("epsilon", 1e-6)),
    "pass": lambda o: pass_(o.get("stabilizer", 1e-6)),
    "gate": lambda o: gate(),
    "gamma": lambda o: gamma(o.get("gamma", 0.25), o.get("stabilizer", 1e-6)),
    "zplus": lambda o: zplus(o.get("stabilizer", 1e-6)),
    "alpha1beta0": lambda o: zplus(o.get("stabilizer", 1e-6)),
    "alphabeta": lambda o: alphabeta(o.get("alpha", 2.0), o.get("beta", 1.0), o.get("stabilizer", 1e-6)),
    "alpha2beta1": lambda o: alphabeta(2.0, 1.0, o.get("stabilizer", 1e-6)),
    "flat": lambda o: flat(o.get("stabilizer", 1e-6)),
    "wsquare": lambda o: wsquare(o.get("stabilizer", 1e-6)),
    "zbox": lambda o: zbox(o.get("low"), o.get("high"), o.get("stabilizer", 1e-6)),
    "constantstd": lambda o: constant_std(),
    "cp": lambda o: cp(),
    "attnlrp": lambda o: attnlrp(),
}


def make_rule(spec: Any, options: Mapping[str, Any] | None = None) -> Rule:
    """A :class:`Rule` from a spec: a name (parameters from ``options``: epsilon, gamma, alpha,
    beta, low, high, stabilizer), a ``(name, {param: value})`` pair, or a Rule."""
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        unknown = set(spec[1]) - {"epsilon", "gamma", "alpha", "beta", "low", "high", "stabilizer"}
        if unknown:
            raise OptionError(f"LRP rule {spec[0]!r} got unknown parameter(s) {sorted(unknown)}; rule "
                              f"parameters are epsilon, gamma, alpha, beta, low, high, stabilizer")
        return make_rule(spec[0], {**opts, **spec[1]})
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "").replace("_", "")
        key = {"lrp0": "zero", "z": "zero", "wsquared": "wsquare", "w2": "wsquare", "zb": "zbox",
               "box": "zbox", "alpha2beta1": "alpha2beta1", "alpha1beta0": "alpha1beta0"}.get(key, key)
        if key in _FACTORIES:
            return _FACTORIES[key](opts)
    raise OptionError(f"unknown LRP rule {spec!r}; use one of {list(RULE_NAMES)}, a "
                      f"(name, {{param: value}}) pair, or a xplain.methods.lrp.rules.Rule")


# ---- evaluation helpers (backend ops only) -------------------------------------------------------
def modify_param(B: Any, name: str, p: Any, gamma_: float) -> Any:
    """Apply parameter modifier ``name`` to tensor ``p``."""
    if name == "identity":
        return p
    if name == "positive":
        return B.maximum(p, 0.0)
    if name == "negative":
        return B.minimum(p, 0.0)
    if name == "gamma+":
        return p + B.maximum(p, 0.0) * gamma_
    if name == "gamma-":
        return p + B.minimum(p, 0.0) * gamma_
    if name == "gamma*positive":
        return B.maximum(p, 0.0) * gamma_
    if name == "gamma*negative":
        return B.minimum(p, 0.0) * gamma_
    if name == "ones":
        return B.ones_like(p)
    if name == "square":
        return p * p
    raise ValueError(f"unknown parameter modifier {name!r}; known: {_PARAM_MODS}")


def piecewise_slopes(name: str, gamma_: float) -> tuple[float, float] | None:
    """``(α, β)`` for a parameter modifier that maps ``p`` to ``α·p`` where ``p > 0`` and ``β·p``
    where ``p < 0`` with ``α > 0`` (``modify_param``'s value is then
    ``LRPKernels.scaled_leaky_relu(p, α, β/α)``), or ``None`` for the other modifiers."""
    slopes = {"identity": (1.0, 1.0), "positive": (1.0, 0.0), "gamma+": (1.0 + gamma_, 1.0),
              "gamma-": (1.0, 1.0 + gamma_), "gamma*positive": (gamma_, 0.0)}.get(name)
    return slopes if slopes is not None and slopes[0] > 0 else None


def stabilize(B: Any, z: Any, eps: float) -> Any:
    """``z + eps·sign(z)`` with sign(0) := +1, so the result is never zero for ``eps > 0``."""
    if eps == 0:
        return B.where(z == 0, 1.0, z)
    return B.where(z >= 0, z + eps, z - eps)
