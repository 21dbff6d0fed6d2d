"""explain() end to end on the backend under test: inputs, targets, guard, saliency numbers."""
import numpy as np
import pytest

import xplain
from xplain import plugins
from xplain.errors import InputError, LayerError, ModelError, TargetError


def _linear_model(fw):
    w = np.array([[1.0, -2.0, 0.5, 0.0], [0.0, 3.0, -1.0, 2.0], [-1.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    return fw.sequential(fw.linear(4, 3, weight=w, bias=[0.1, -0.2, 0.3])), w


def test_saliency_modes_hand_computed(fw):
    model, w = _linear_model(fw)
    x = fw.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, 0.0]])
    raw = xplain.explain(model, x, method="saliency", target=[1, 2], mode="raw")
    np.testing.assert_allclose(raw.numpy(), w[[1, 2]])
    np.testing.assert_allclose(xplain.explain(model, x, "saliency", [1, 2]).numpy(), np.abs(w[[1, 2]]))
    np.testing.assert_allclose(xplain.explain(model, x, "saliency", [1, 2], mode="square").numpy(),
                               w[[1, 2]] ** 2)
    ixg = xplain.explain(model, x, method="input_x_gradient", target=0)
    np.testing.assert_allclose(ixg.numpy(), fw.numpy(x) * w[0])
    assert ixg.targets.tolist() == [0, 0] and ixg.backend == fw.name
    assert type(ixg.attributions) is type(x)


def test_saliency_on_relu_net_matches_manual_chain_rule(fw):
    w1 = np.array([[1.0, -1.0], [2.0, 1.0], [-1.0, 0.5]], dtype=np.float32)
    w2 = np.array([[1.0, 2.0, -3.0]], dtype=np.float32)
    model = fw.sequential(fw.linear(2, 3, weight=w1, bias=[0, 0, 0]), fw.relu(),
                          fw.linear(3, 1, weight=w2, bias=[0]))
    x = np.array([[1.0, 0.5]], dtype=np.float32)
    active = (x @ w1.T > 0).astype(np.float32)  # [1, 1, 0]
    expected = (w2 * active) @ w1
    got = xplain.explain(model, fw.tensor(x), "saliency", 0, mode="raw").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_target_none_uses_each_samples_argmax(fw):
    model, w = _linear_model(fw)
    x = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 1.0]], dtype=np.float32)
    exp = xplain.explain(model, fw.tensor(x), "saliency", mode="raw")
    expected_t = (x @ w.T + [0.1, -0.2, 0.3]).argmax(1)
    assert exp.targets.tolist() == expected_t.tolist()
    np.testing.assert_allclose(exp.numpy(), w[expected_t])


def test_target_as_framework_tensor(fw):
    model, w = _linear_model(fw)
    x = fw.tensor(np.ones((2, 4)))
    exp = xplain.explain(model, x, "saliency", fw.tensor([2, 0], dtype="int64"), mode="raw")
    np.testing.assert_allclose(exp.numpy(), w[[2, 0]])
    with pytest.raises(TargetError, match="float dtype"):
        xplain.explain(model, x, "saliency", fw.tensor([2.0, 0.0]))


@pytest.mark.parametrize("bad,fragment", [
    (np.ones((2, 4), dtype=np.float32), "must be a"),
    ("rank1", "batch dimension"),
    ("int", "dtype int64"),
    ("nan", "NaN or Inf"),
    ("empty", "empty batch"),
])
def test_bad_inputs_raise_input_error(fw, bad, fragment):
    model, _ = _linear_model(fw)
    if isinstance(bad, str):
        bad = {"rank1": fw.tensor(np.ones(4)), "int": fw.tensor(np.ones((2, 4)), dtype="int64"),
               "nan": fw.tensor([[1.0, np.nan, 0, 0]]), "empty": fw.tensor(np.ones((0, 4)))}[bad]
    with pytest.raises(InputError, match=fragment):
        xplain.explain(model, bad, "saliency")


def test_target_errors(fw):
    model, _ = _linear_model(fw)
    x = fw.tensor(np.ones((2, 4)))
    with pytest.raises(TargetError, match="out of range.*3 classes"):
        xplain.explain(model, x, "saliency", target=3)
    with pytest.raises(TargetError, match="3 entries but the batch has 2"):
        xplain.explain(model, x, "saliency", target=[0, 1, 2])


def test_non_classifier_output_is_refused(fw):
    model = fw.sequential(fw.conv2d(1, 2, 3))
    with pytest.raises(ModelError, match=r"shape \(1, 2, 3, 3\).*\(batch, classes\)"):
        xplain.explain(model, fw.tensor(np.ones((1, 1, 5, 5))), "saliency")


class _Failing:
    """Injected failure: a method that adds a hook, changes modes and flags, then raises."""

    @staticmethod
    @plugins.hookimpl
    def xplain_register_methods(registry):
        def explode(run):
            B = run.backend
            B.add_forward_hook(run.layers()[1].module, lambda *a: None)
            run.model.train()
            run.input_gradient(run.inputs)
            raise RuntimeError("injected failure")

        registry.add_method("explode", explode)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_guard_restores_everything_also_on_error(fw, mode):
    model = fw.model("small_cnn")
    getattr(model, mode)()
    x = fw.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)))
    before = fw.model_state(model)
    exp = xplain.explain(model, x, "saliency")
    fw.assert_same_state(before, fw.model_state(model))
    assert np.isfinite(exp.numpy()).all() and exp.numpy().any()
    plugins.register(_Failing(), name="failing")
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            xplain.explain(model, x, "explode")
    finally:
        plugins.unregister(name="failing")
    fw.assert_same_state(before, fw.model_state(model))


def test_bn_statistics_untouched_in_train_mode(fw):
    """In train mode a forward would update BatchNorm running stats; explain() must not."""
    model = fw.model("small_cnn")
    model.train()
    x = fw.tensor(np.random.default_rng(1).standard_normal((4, 1, 28, 28)) * 3 + 1)
    before = fw.model_state(model)
    xplain.explain(model, x, "saliency", target=1)
    fw.assert_same_state(before, fw.model_state(model))


def test_saliency_on_resnet18_matches_manual_autodiff(fw):
    model = fw.model("resnet18")
    x_np = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x_np), "saliency", target=[3, 7], mode="raw")
    # reference straight through the framework, no xplain involved
    if fw.name == "torch":
        import torch

        xg = torch.as_tensor(x_np).requires_grad_(True)
        out = model(xg)
        (ref,) = torch.autograd.grad(out[0, 3] + out[1, 7], xg)
        ref = ref.numpy()
    else:
        import paddle

        xg = paddle.to_tensor(x_np, stop_gradient=False)
        out = model(xg)
        (ref,) = paddle.grad(out[0, 3] + out[1, 7], xg)
        ref = ref.numpy()
    np.testing.assert_allclose(exp.numpy(), ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())


def test_explanation_extras_and_errors(fw):
    model, _ = _linear_model(fw)
    exp = xplain.explain(model, fw.tensor(np.ones((1, 4))), "saliency")
    with pytest.raises(AttributeError, match="extras of this method"):
        exp.relevance_sum  # noqa: B018


def test_backend_forced_by_name(fw):
    model, w = _linear_model(fw)
    x = fw.tensor(np.ones((1, 4)))
    assert xplain.explain(model, x, "saliency", 0, backend=fw.name).backend == fw.name
    with pytest.raises(xplain.BackendError):
        xplain.explain(model, x, "saliency", 0, backend="nope")
    assert fw.name in xplain.backends()


def test_works_inside_users_no_grad(fw):
    model, w = _linear_model(fw)
    x = fw.tensor(np.ones((1, 4)))
    with fw.B.no_grad():
        exp = xplain.explain(model, x, "saliency", 1, mode="raw")
    np.testing.assert_allclose(exp.numpy(), w[[1]])


#: options that keep each method quick on the small CNN; every other method runs on defaults
_QUICK = {
    "integrated_gradients": {"steps": 4}, "gradient_shap": {"samples": 2},
    "smoothgrad": {"samples": 2}, "smoothgrad_sq": {"samples": 2}, "vargrad": {"samples": 2},
    "occlusion": {"sliding_window_shapes": (1, 7, 7), "strides": (1, 7, 7)},
    "rise": {"masks": 8}, "prototype": {"steps": 3},
}


def test_every_registered_method_leaves_the_model_untouched(fw):
    """The borrowed-model promise, checked for every method (plugins included) in train mode,
    where a careless forward would update BatchNorm statistics."""
    model = fw.model("small_cnn")
    model.train()
    x = fw.tensor(np.random.default_rng(3).standard_normal((2, 1, 28, 28)))
    before = fw.model_state(model)
    import warnings

    applicable = xplain.methods(model)
    for method in xplain.methods():
        if method not in applicable:  # attention rollout on a CNN: refused, the model untouched
            with pytest.raises(LayerError, match="has none"):
                xplain.explain(model, x, method, target=[1, 2])
            fw.assert_same_state(before, fw.model_state(model))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-zero CAM maps on random weights
            exp = xplain.explain(model, x, method, target=[1, 2], **_QUICK.get(method, {}))
        assert np.isfinite(exp.numpy()).all(), method
        fw.assert_same_state(before, fw.model_state(model))


def test_scores_reported_with_argmax_targets_are_the_models(fw):
    """``exp.scores`` (target=None) is the model's output on the inputs, for every method that
    reports it: equal to ``xplain.predict``, and the targets are its argmax. A method that took
    its targets from another forward (noisy or interpolated inputs) would fail here."""
    from xplain import demo

    model = demo.build_model(fw.name)
    images, _ = demo.draw_shapes(np.random.default_rng(0), 3)
    x = fw.tensor(demo.to_input(images))
    want = xplain.predict(model, x)
    reported = []
    for method in xplain.methods(model):
        opts = {"integrated_gradients": {"steps": 4}, "prototype": {"steps": 2}}.get(
            method, demo.DEMO_OPTIONS.get(method, {}))
        exp = xplain.explain(model, x, method=method, **opts)
        if "scores" in exp.extras and method != "prototype":  # prototype's are its synthesis's
            reported.append(method)
            # the same model and inputs; batch and graph mode change float32 rounding only
            np.testing.assert_allclose(exp.scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
            np.testing.assert_array_equal(exp.targets, want.argmax(1))
    assert {"saliency", "gradcam", "lrp", "integrated_gradients"} <= set(reported)
