"""LRP composites: which rule each layer gets, looked up by name.

A :class:`Composite` maps layer *kinds* (``"conv"``, ``"linear"``, ``"batchnorm"`` ... — see
:data:`xplain.backend.LAYER_KINDS`), layer *names* (exact dotted names or glob patterns such as
``"features.*"``), and optionally the *first* conv/linear layer (the one that reads the input) to
rule specs (a rule name, ``(name, {param: value})`` or a :class:`~.rules.Rule`). Rule parameters
not fixed in the composite come from the ``lrp`` method's options (``epsilon``, ``gamma``, ``low``,
``high`` ...).

Built-in composites follow Kohlbrenner et al., "Towards Best Practice in Explaining Neural Network
Decisions with LRP" (IJCNN 2020) and Montavon et al. (2019), and carry the same names as Zennit's:

=============================  ===========  ===========  ============
name                           first layer  conv         linear
=============================  ===========  ===========  ============
``epsilon``                    —            ε            ε
``epsilon_plus``               —            z⁺           ε
``epsilon_plus_flat``          flat         z⁺           ε
``epsilon_gamma_box``          z^B          γ            ε
``epsilon_alpha2_beta1``       —            α2β1         ε
``epsilon_alpha2_beta1_flat``  flat         α2β1         ε
``zero``                       —            LRP-0        LRP-0
``cp_lrp``                     —            ε            ε            (attention: ``cp``)
``attn_lrp``                   —            ε            ε            (attention: ``attnlrp``)
=============================  ===========  ===========  ============

``composite="auto"`` (the default) is ``epsilon_plus_flat``, or ``attn_lrp`` for a model with
attention layers (Achtibat et al. 2024 measure AttnLRP as the more faithful of the two on ViTs).

In every built-in composite, element-wise activations other than ReLU get ``pass`` (relevance
passes unchanged, a constant offset ``f(0)`` absorbed like a bias: the identity rule for GELU and
SiLU), LayerNorm gets ``constant_std``, attention ``cp`` (except ``attn_lrp``), gates (squeeze-and-excitation)
get ``gate``, and BatchNorm layers that cannot be merged into a preceding conv/linear
(DenseNet's BN→ReLU→Conv) get ε as the affine maps they are; ReLU, pooling, flatten, dropout and
sums propagate by the gradient (LRP-0, exact for them). A conv/linear layer whose kind rule is
z⁺, γ or αβ but whose input is not provably non-negative (after a linear bottleneck, a SiLU, a
sum) gets the composite's ``signed`` rule instead (ε): those rules are defined for the
non-negative inputs a ReLU produces.

Register your own through the plugin hook::

    @xplain.hookimpl
    def xplain_register_composites(registry):
        registry.add_composite("my_composite", Composite({"conv": "gamma", "linear": "epsilon"},
                                                         first="zbox"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from ...errors import OptionError

RuleSpec = Any
"""A rule name, a ``(name, {param: value})`` pair, or a :class:`~.rules.Rule`."""


@dataclass(frozen=True)
class Composite:
    """A mapping of layers to LRP rules.

    Attributes:
        kinds: layer kind → rule spec.
        names: layer name or glob pattern → rule spec (checked before kinds).
        first: rule for the first conv/linear layer executed (the one reading the input), or
            ``None``. Explicit rules (flat, w², z^B) are only possible there.
        description: one line for listings.
        signed: rule for a conv/linear layer whose *kind* rule is z⁺, γ or αβ but whose input
            is not provably non-negative; ``None`` keeps the kind rule there.
    """

    kinds: Mapping[str, RuleSpec] = field(default_factory=dict)
    names: Mapping[str, RuleSpec] = field(default_factory=dict)
    first: RuleSpec | None = None
    description: str = ""
    signed: RuleSpec | None = "epsilon"


#: The classic composites take the conservative attention rule (with biases zero they conserve).
_BASE = {"activation": "pass", "batchnorm": "epsilon", "layernorm": "constant_std", "attention": "cp"}

#: Built-in composites, registered by :mod:`xplain.methods.plugin`.
BUILTIN: dict[str, Composite] = {
    "zero": Composite({"conv": "zero", "linear": "zero", "batchnorm": "zero", **{"activation": "pass"}},
                      description="LRP-0 everywhere (equals input×gradient on ReLU networks)"),
    "epsilon": Composite({**_BASE, "conv": "epsilon", "linear": "epsilon"},
                         description="LRP-ε on every conv and linear layer"),
    "epsilon_plus": Composite({**_BASE, "conv": "zplus", "linear": "epsilon"},
                              description="z⁺ on conv, ε on linear"),
    "epsilon_plus_flat": Composite({**_BASE, "conv": "zplus", "linear": "epsilon"}, first="flat",
                                   description="flat first layer, z⁺ on conv, ε on linear (default)"),
    "epsilon_gamma_box": Composite({**_BASE, "conv": "gamma", "linear": "epsilon"}, first="zbox",
                                   description="z^B first layer (needs low=, high=), γ on conv, ε on linear"),
    "epsilon_alpha2_beta1": Composite({**_BASE, "conv": "alpha2beta1", "linear": "epsilon"},
                                      description="α2β1 on conv, ε on linear"),
    "epsilon_alpha2_beta1_flat": Composite({**_BASE, "conv": "alpha2beta1", "linear": "epsilon"},
                                           first="flat",
                                           description="flat first layer, α2β1 on conv, ε on linear"),
    "cp_lrp": Composite({**_BASE, "conv": "epsilon", "linear": "epsilon", "attention": "cp"},
                        description="transformers, conservative propagation (Ali et al. 2022): ε, "
                                    "LayerNorm σ and attention weights constant"),
    "attn_lrp": Composite({**_BASE, "conv": "epsilon", "linear": "epsilon", "attention": "attnlrp"},
                          description="transformers, AttnLRP (Achtibat et al. 2024): ε, LayerNorm σ "
                                      "constant, uniform rule on attention products"),
}

#: The composite ``composite="auto"`` (the default) picks for convolutional networks, and for
#: models with attention layers.
DEFAULT = "epsilon_plus_flat"
DEFAULT_ATTENTION = "attn_lrp"


def lookup(composite: Any, registered: Mapping[str, Any]) -> Composite:
    """The :class:`Composite` for ``composite``: a registered name, a Composite, ``None`` (no
    base mapping: only ``rules=``), or a plain dict ``{kind-or-name: rule}``."""
    if composite is None:
        return Composite()
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, Mapping):
        return Composite(names=dict(composite))
    if isinstance(composite, str):
        key = composite.strip().lower().replace("-", "_")
        if key in registered:
            found = registered[key]
            if not isinstance(found, Composite):
                raise OptionError(f"LRP composite {key!r} was registered as {type(found).__name__}, "
                                  f"not a xplain.methods.lrp.Composite; fix the plugin that adds it")
            return found
        raise OptionError(f"unknown LRP composite {composite!r}; registered: {sorted(registered)} "
                          f"(add your own with registry.add_composite in a xplain_register_composites hook)")
    raise OptionError(f"composite must be a name, a Composite or a dict, got {type(composite).__name__}")
