"""Concurrency: explanations from several threads equal the sequential ones and leave every
model exactly as found (calls on one model are serialised; on paddle all gradient work is)."""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import xplain

CALLS = [  # (method, options): a gradient, a hook-based and a multi-pass method
    ("saliency", {"mode": "raw"}),
    ("gradcam", {}),
    ("lrp", {"composite": "epsilon_plus_flat"}),
    ("integrated_gradients", {"steps": 4}),
]


def _inputs(fw, seed, n=2):
    return fw.tensor(np.random.default_rng(seed).standard_normal((n, 1, 28, 28)))


def _sequential(fw, model, jobs):
    return [xplain.explain(model, x, m, target=t, **kw).numpy() for (m, kw), x, t in jobs]


def _jobs(fw, count):
    xs = [_inputs(fw, s) for s in range(4)]
    return [(CALLS[i % len(CALLS)], xs[i % len(xs)], [i % 10, (3 * i) % 10]) for i in range(count)]


@pytest.mark.parametrize("threads", [2, 4])
def test_one_model_from_many_threads_equals_sequential(fw, threads):
    model = fw.model("small_cnn")
    model.train()  # the guard must put this back, whatever the interleaving
    before = fw.model_state(model)
    jobs = _jobs(fw, 8 * threads)
    expected = _sequential(fw, model, jobs)
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(lambda job: xplain.explain(model, job[1], job[0][0], target=job[2],
                                                       **job[0][1]).numpy(), jobs))
    for (call, _, _), e, g in zip(jobs, expected, got):
        # the same call on the same model and input: the same numbers, bit for bit
        np.testing.assert_array_equal(g, e, err_msg=call[0])
    fw.assert_same_state(before, fw.model_state(model))


@pytest.mark.parametrize("threads", [2, 4])
def test_different_models_from_many_threads(fw, threads):
    models = [fw.model("small_cnn", seed=s) for s in range(threads)]
    states = [fw.model_state(m) for m in models]
    jobs = list(itertools.product(range(threads), CALLS[:3]))
    x = _inputs(fw, 7)
    expected = {(i, c[0]): xplain.explain(models[i], x, c[0], target=1, **c[1]).numpy() for i, c in jobs}
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(lambda job: xplain.explain(models[job[0]], x, job[1][0], target=1,
                                                       **job[1][1]).numpy(), jobs))
    for (i, c), g in zip(jobs, got):
        np.testing.assert_array_equal(g, expected[(i, c[0])], err_msg=f"model {i} {c[0]}")
    for m, s in zip(models, states):
        fw.assert_same_state(s, fw.model_state(m))


def test_error_in_one_thread_leaves_the_model_for_the_others(fw):
    """A refused call (bad target) interleaved with good ones: the good ones are unaffected."""
    model = fw.model("small_cnn")
    before = fw.model_state(model)
    x = _inputs(fw, 1)
    good = xplain.explain(model, x, "saliency", target=[2, 3], mode="raw").numpy()

    def call(i):
        if i % 2:
            with pytest.raises(xplain.TargetError):
                xplain.explain(model, x, "saliency", target=[99, 0])
            return None
        return xplain.explain(model, x, "saliency", target=[2, 3], mode="raw").numpy()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(16)))
    for r in results:
        if r is not None:
            np.testing.assert_array_equal(r, good)
    fw.assert_same_state(before, fw.model_state(model))
