"""Hook implementations of the ``xplain-sanity`` method pack (public API only)."""
from __future__ import annotations

import numpy as np

from xplain import Run, hookimpl


def random_baseline(run: Run, *, distribution: str = "uniform"):
    """Random attributions drawn from the run's seeded generator: the floor any real method
    must beat in faithfulness metrics (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

    Args:
        distribution: ``"uniform"`` (U[0, 1)) or ``"normal"`` (N(0, 1)).
    """
    shape = run.backend.shape(run.inputs)
    values = run.rng.random(shape) if distribution == "uniform" else run.rng.standard_normal(shape)
    run.resolve_targets()
    return run.backend.asarray(values.astype(np.float32), like=run.inputs)


@hookimpl
def xplain_register_methods(registry) -> None:
    registry.add_method("random_baseline", random_baseline)
