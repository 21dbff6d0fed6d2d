"""Occlusion and RISE: numbers against analytic answers on weighted-pixel-sum models.

Oracles: occlusion of a linear model ``f = Σ w_p x_p + b`` drops the score by exactly the
occluded window's ``Σ w_q (x_q − baseline)``, averaged over the windows covering a pixel (a
slow loop here); RISE with keep-probability 1 returns the score everywhere; batching and the
seed fix the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import OptionError
from xplain.methods.perturbation import window_origins

SHAPE = (2, 8, 8)


def pixel_sum_model(fw, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, int(np.prod(SHAPE)))).astype(np.float32)
    model = fw.sequential(fw.flatten(), fw.linear(w.shape[1], 3, weight=w, bias=np.array([0.5, -1.0, 0.2])))
    return model, w.reshape((3,) + SHAPE)


def occlusion_reference(x, w, t, window, strides, base):
    """Slow loop: every window's score drop, averaged per covered pixel."""
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        total = np.zeros(SHAPE)
        count = np.zeros(SHAPE)
        for o in window_origins(SHAPE, window, strides):
            sl = tuple(slice(a, a + s) for a, s in zip(o, window))
            drop = (w[t[i]][sl] * (x[i][sl] - base[i][sl] if np.ndim(base) else x[i][sl] - base)).sum()
            total[sl] += drop
            count[sl] += 1
        out[i] = total / count
    return out


@pytest.mark.core
def test_window_origins_follow_captum():
    # the seed parameters: 224², windows (3,45,45), strides (3,9,9) -> 21 × 21 windows, the
    # last row/column clipped at the border so every pixel is covered
    o = window_origins((3, 224, 224), (3, 45, 45), (3, 9, 9))
    assert len(o) == 441 and o[-1] == (0, 180, 180)
    assert window_origins((2, 8, 8), (1, 4, 4), (1, 3, 3))[-1] == (1, 6, 6)


@pytest.mark.parametrize("window,strides", [((1, 1, 1), 1), ((1, 3, 3), (1, 2, 2)),
                                            ((2, 4, 4), (1, 3, 3)), ((1, 5, 2), (1, 2, 1))])
def test_occlusion_of_weighted_pixel_sum_is_analytic(fw, window, strides):
    model, w = pixel_sum_model(fw)
    x = np.random.default_rng(1).normal(size=(3,) + SHAPE).astype(np.float32)
    t = np.array([0, 2, 1])
    exp = xplain.explain(model, fw.tensor(x), "occlusion", target=t,
                         sliding_window_shapes=window, strides=strides, baselines=0.25)
    ref = occlusion_reference(x, w, t, window, strides if isinstance(strides, tuple) else (1, 1, 1), 0.25)
    np.testing.assert_allclose(exp.numpy(), ref, rtol=1e-4, atol=1e-5)
    if window == (1, 1, 1):
        np.testing.assert_allclose(exp.numpy(), w[t] * (x - 0.25), rtol=1e-4, atol=1e-5)


def test_occlusion_tensor_baseline_and_chunking(fw):
    model, w = pixel_sum_model(fw)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2,) + SHAPE).astype(np.float32)
    base = rng.normal(size=(2,) + SHAPE).astype(np.float32)
    kw = dict(target=[1, 0], sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2),
              baselines=fw.tensor(base))
    a = xplain.explain(model, fw.tensor(x), "occlusion", **kw)
    b = xplain.explain(model, fw.tensor(x), "occlusion", max_batch=3, **kw)
    ref = occlusion_reference(x, w, np.array([1, 0]), (1, 3, 3), (1, 2, 2), base)
    np.testing.assert_allclose(a.numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert a.windows == 2 * 4 * 4  # ceil((8 - 3) / 2) + 1 = 4 starts per spatial dim


def test_occlusion_resnet18_batches_forward_only(fw):
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(1, 3, 32, 32)))
    sizes = []
    h = fw.B.add_forward_hook(model, lambda m, i, o: sizes.append(fw.B.shape(i[0])[0]))
    try:
        exp = xplain.explain(model, x, "occlusion", sliding_window_shapes=(3, 8, 8),
                             strides=(3, 4, 4), max_batch=20)
    finally:
        h.remove()
    assert exp.windows == 49 and sizes[-3:] == [17, 17, 15]  # balanced under max_batch=20
    again = xplain.explain(model, x, "occlusion", sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))
    np.testing.assert_allclose(exp.numpy(), again.numpy(), rtol=1e-4, atol=1e-4 * np.abs(exp.numpy()).max())


def test_occlusion_bad_options(fw):
    model, _ = pixel_sum_model(fw)
    x = fw.tensor(np.zeros((1,) + SHAPE))
    with pytest.raises(OptionError, match="sliding_window_shapes"):
        xplain.explain(model, x, "occlusion")
    with pytest.raises(OptionError, match="exceed"):
        xplain.explain(model, x, "occlusion", sliding_window_shapes=(1, 9, 2))
    with pytest.raises(OptionError, match="strides"):
        xplain.explain(model, x, "occlusion", sliding_window_shapes=(1, 2, 2), strides=(1, 3, 3))
    with pytest.raises(OptionError, match="3 positive ints"):
        xplain.explain(model, x, "occlusion", sliding_window_shapes=(2, 2))


def test_rise_keep_all_is_the_score(fw):
    model, w = pixel_sum_model(fw)
    x = np.random.default_rng(3).normal(size=(2,) + SHAPE).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), "rise", target=[0, 1], masks=5, cells=3, p=1.0,
                         probabilities=False)
    score = (w[[0, 1]] * x).reshape(2, -1).sum(1) + np.array([0.5, -1.0])
    assert exp.numpy().shape == (2, 8, 8)
    np.testing.assert_allclose(exp.numpy(), np.broadcast_to(score[:, None, None], (2, 8, 8)), rtol=1e-5)


def test_rise_finds_the_region_the_model_reads(fw):
    """f = sum of the top-left quadrant: RISE is larger there than in the far corner."""
    w = np.zeros((2,) + SHAPE, np.float32)
    w[0, :, :4, :4] = 1.0
    w[1, :, 4:, 4:] = 1.0
    model = fw.sequential(fw.flatten(), fw.linear(128, 2, weight=w.reshape(2, -1), bias=np.zeros(2)))
    x = fw.tensor(np.ones((1,) + SHAPE))
    sal = xplain.explain(model, x, "rise", target=0, masks=400, cells=4, probabilities=False).numpy()[0]
    # E[f M_p]/p = E[f] + Cov(f, M_p)/p: a constant plus a bump where the model reads
    assert sal[:3, :3].mean() > sal[5:, 5:].mean() + 1.5
    assert np.unravel_index(sal.argmax(), sal.shape) < (4, 4)


def test_rise_seed_and_chunking(fw):
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    a = xplain.explain(model, x, "rise", masks=40, seed=3).numpy()
    b = xplain.explain(model, x, "rise", masks=40, seed=3, max_batch=7).numpy()
    c = xplain.explain(model, x, "rise", masks=40, seed=4).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(a, c)
    assert a.shape == (2, 32, 32)


@pytest.mark.peer
def test_peer_captum_occlusion(fw):
    captum = pytest.importorskip("captum.attr")
    model, _ = pixel_sum_model(fw)
    x = fw.tensor(np.random.default_rng(1).normal(size=(3,) + SHAPE))
    for window, strides in (((1, 3, 3), (1, 2, 2)), ((2, 4, 4), (1, 3, 3))):
        ref = captum.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides,
                                                baselines=0.25, target=[0, 2, 1])
        ours = xplain.explain(model, x, "occlusion", target=[0, 2, 1], sliding_window_shapes=window,
                              strides=strides, baselines=0.25)
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(1, 3, 48, 48)))
    ref = captum.Occlusion(model).attribute(x, sliding_window_shapes=(3, 12, 12), strides=(3, 5, 5),
                                            baselines=0, target=3, perturbations_per_eval=16)
    ours = xplain.explain(model, x, "occlusion", target=3, sliding_window_shapes=(3, 12, 12),
                          strides=(3, 5, 5), baselines=0)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-3, atol=1e-4 * np.abs(ref.numpy()).max())
