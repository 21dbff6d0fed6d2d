"""Explaining folders of image files: the job behind ``xplain explain`` and
:func:`xplain.explain_folder` (inputs streamed in batches; one PNG per image and target,
``attributions.npz``, ``results.csv`` and a self-contained ``index.html`` report)."""
from .folder import explain_folder

__all__ = ["explain_folder"]
