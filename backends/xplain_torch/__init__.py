"""PyTorch backend for xplain. ``import xplain_torch`` does not import torch; the backend
module :mod:`xplain_torch.backend` does, and is loaded only when a torch object is seen."""
