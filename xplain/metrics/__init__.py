"""Faithfulness metrics: how much does the model's score depend on what an attribution ranks
highest? Functions of ``(model, inputs, attributions, target)`` that run batched forwards
through the backend and return numpy results.

* :func:`deletion` / :func:`insertion` — Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling
  for Explanation of Black-box Models" (BMVC 2018).
* :func:`pixel_flipping` (AOPC) — Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the
  visualization of what a deep neural network has learned" (IEEE TNNLS 2017).
* :func:`sensitivity_max` — Yeh et al., "On the (In)fidelity and Sensitivity of Explanations"
  (NeurIPS 2019).

:func:`confidence_change` (Average Drop / Increase in Confidence) — Chattopadhay et al.,
"Grad-CAM++" (WACV 2018). Localisation against an object mask or box (:mod:`.localisation`: pointing game, relevance
mass, relevance rank, top-k intersection) and complexity (:mod:`.complexity`: sparseness,
entropy) read the maps alone.
"""
from __future__ import annotations

from .complexity import complexity, sparseness
from .confidence import ConfidenceResult, confidence_change
from .faithfulness import CurveResult, deletion, insertion, pixel_flipping
from .localisation import object_masks, pointing_game, relevance_mass, relevance_rank, top_k_intersection
from .robustness import sensitivity_max

__all__ = ["ConfidenceResult", "CurveResult", "complexity", "confidence_change", "deletion", "insertion", "object_masks", "pixel_flipping",
           "pointing_game", "relevance_mass", "relevance_rank", "sensitivity_max", "sparseness",
           "top_k_intersection"]
