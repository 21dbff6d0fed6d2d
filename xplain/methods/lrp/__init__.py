"""Layer-wise Relevance Propagation (LRP), written once for every backend.

* :mod:`.rules` — rules as data (ε, γ, z⁺, αβ, flat, w², z^B, pass, LRP-0);
* :mod:`.composites` — which rule each layer gets, by kind, name pattern or first layer;
* :mod:`.canonize` — BatchNorm merging and first-layer detection from a probe forward pass;
* :mod:`.attribute` — the ``lrp`` method: relevance = input ⊙ modified gradient.

Usage::

    xplain.explain(model, x, method="lrp", target=t)                        # epsilon_plus_flat
    xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=-3.0, high=3.0)
    xplain.explain(model, x, method="lrp", rules={"features.0": "zbox", "conv": "gamma"}, low=-3, high=3)
"""
from __future__ import annotations

from .attribute import lrp
from .composites import BUILTIN, DEFAULT, Composite
from .rules import Rule, make_rule

METHODS = {"lrp": lrp}

__all__ = ["BUILTIN", "DEFAULT", "Composite", "METHODS", "Rule", "lrp", "make_rule"]
