import numpy as np
import xplain


def test_saliency_linear_model_equals_weights(fw):
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    model = fw.sequential(fw.linear(4, 3, weight=w, bias=np.zeros(3)))
    x = fw.tensor(np.ones((2, 4)))
    exp = xplain.explain(model, x, method="saliency", target=[0, 2], mode="raw")
    np.testing.assert_allclose(exp.numpy(), w[[0, 2]], rtol=1e-6)
