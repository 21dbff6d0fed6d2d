"""Layer-wise Relevance Propagation (LRP), written once for every backend.

* :mod:`.rules` — rules as data (ε, γ, z⁺, αβ, flat, w², z^B, pass, gate, LRP-0);
* :mod:`.composites` — which rule each layer gets, by kind, name pattern or first layer;
* :mod:`.canonize` — what LRP needs to know of the model (BatchNorm to merge, the first layer,
  signs, gates, in-place changes), from the model's observation pass (:mod:`xplain.observe`);
* :mod:`.planning` — the rule of every executed layer, or a ``LayerError`` saying why none fits;
* :mod:`.params`, :mod:`.terms`, :mod:`.elementwise`, :mod:`.emit` — modified parameters, a
  rule's terms on one layer call, the element-wise rules, the replacement of a layer's output;
* :mod:`.hooks` — the forward hooks of one modified pass; :mod:`.ledger` — the conservation
  report; :mod:`.kernels` — LRP's own operations (reference + backends' fused overrides);
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
