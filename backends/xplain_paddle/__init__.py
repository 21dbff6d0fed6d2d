"""PaddlePaddle backend for xplain. ``import xplain_paddle`` does not import paddle; the backend
module :mod:`xplain_paddle.backend` does, and is loaded only when a paddle object is seen."""
