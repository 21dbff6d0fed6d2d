"""``output=``: explaining models that return a tuple, list, dict, named tuple or object.

Oracle: the same model wrapped so that it returns the selected tensor. Every method's attribution
with ``output=`` must equal the wrapper's bit for bit (the same operations run on the same
numbers; only where the scores are picked differs), and the CAM default layer must be one that
feeds the selected output, never an auxiliary head's. Refusals of bad selectors are in the
catalogue (``tests/test_bad_inputs.py``); here their messages are checked for the structure.
"""
from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError, ModelError, OptionError

Pair = collections.namedtuple("Pair", "logits aux")


class Outputs:
    """An output object with tensor attributes (as a transformers ``ModelOutput`` has)."""

    def __init__(self, logits: Any, aux: Any) -> None:
        self.logits, self.aux = logits, aux


PACK = {
    "tuple": lambda main, aux: (main, aux),
    "list": lambda main, aux: [main, aux],
    "dict": lambda main, aux: {"out": main, "aux": aux},
    "namedtuple": lambda main, aux: Pair(main, aux),
    "object": lambda main, aux: Outputs(main, aux),
}

#: per output kind: selectors of the main logits
SELECT_MAIN = {
    "tuple": [0, -2, lambda out: out[0]],
    "list": [0],
    "dict": ["out", lambda out: out["out"]],
    "namedtuple": ["logits", 0],
    "object": ["logits", lambda out: out.logits],
}


def toy(fw: Any, kind: str) -> Any:
    """``body`` (conv 3→4, ReLU) → pool → ``head`` (3 logits), then an auxiliary classifier on the
    input, ``aux`` (conv 3→2, ReLU) → pool → ``aux_head`` (2 logits), computed after the main
    head as paddle's GoogLeNet does: ``aux`` is the last spatial layer to run."""
    nn = fw.nn()
    base = nn.Module if fw.name == "torch" else nn.Layer
    pool = nn.AdaptiveAvgPool2d if fw.name == "torch" else nn.AdaptiveAvgPool2D
    rng = np.random.default_rng(5)

    class Toy(base):
        def __init__(self) -> None:
            super().__init__()
            self.body = fw.sequential(fw.conv2d(3, 4, 3, padding=1, weight=rng.normal(size=(4, 3, 3, 3)),
                                                bias=rng.normal(size=4) * 0.1), fw.relu())
            self.pool, self.aux_pool = pool(1), pool(1)
            self.head = fw.linear(4, 3, weight=rng.normal(size=(3, 4)), bias=[0.1, 0.0, -0.1])
            self.aux = fw.sequential(fw.conv2d(3, 2, 3, padding=1, weight=rng.normal(size=(2, 3, 3, 3)),
                                               bias=[0.2, 0.1]), fw.relu())
            self.aux_head = fw.linear(2, 2, weight=rng.normal(size=(2, 2)), bias=[0.0, 0.3])
            self.flat = fw.flatten()

        def forward(self, x):
            main = self.head(self.flat(self.pool(self.body(x))))
            aux = self.aux_head(self.flat(self.aux_pool(self.aux(x))))
            return PACK[kind](main, aux)

    return Toy()


def plain(fw: Any, inner: Any, select: Any) -> Any:
    """``inner`` wrapped to return ``select(inner(x))`` (the oracle)."""
    base = fw.nn().Module if fw.name == "torch" else fw.nn().Layer

    class Plain(base):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return select(self.inner(x))

    return Plain()


def by(selector: Any) -> Any:
    """``selector`` as a function of the model's output (how ``output=`` reads it)."""
    if callable(selector):
        return selector
    if isinstance(selector, str):
        return lambda out: out[selector] if isinstance(out, dict) else getattr(out, selector)
    return lambda out: out[selector]


def inputs(fw: Any) -> Any:
    return fw.tensor(np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)))


#: options that keep each method quick on 8x8 inputs; every other method runs on defaults
QUICK = {
    "integrated_gradients": {"steps": 4}, "gradient_shap": {"samples": 2},
    "smoothgrad": {"samples": 2}, "smoothgrad_sq": {"samples": 2}, "vargrad": {"samples": 2},
    "occlusion": {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)},
    "rise": {"masks": 8}, "prototype": {"steps": 3},
}


def explain_quietly(model: Any, x: Any, method: str, **kw: Any) -> Any:
    kw.setdefault("target", [2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-zero CAM maps on a toy
        return xplain.explain(model, x, method, **QUICK.get(method, {}), **kw)


@pytest.mark.parametrize("method", xplain.methods())
def test_every_method_explains_the_selected_output(fw, method):
    model = toy(fw, "tuple")
    x = inputs(fw)
    before = fw.model_state(model)
    if method not in xplain.methods(model):  # attention rollout on a CNN
        with pytest.raises(LayerError, match="has none"):
            explain_quietly(model, x, method, output=0)
        fw.assert_same_state(before, fw.model_state(model))
        return
    got = explain_quietly(model, x, method, output=0)
    want = explain_quietly(plain(fw, model, by(0)), x, method)
    np.testing.assert_array_equal(got.numpy(), want.numpy())  # bit for bit (see module doc)
    assert got.targets.tolist() == [2, 1]
    if "layers" in got.extras:  # CAM: the same module, named inside the wrapper
        assert ["inner." + n for n in got.layers] == want.layers == ["inner.body"]
    fw.assert_same_state(before, fw.model_state(model))


@pytest.mark.parametrize("kind", sorted(SELECT_MAIN))
def test_every_selector_form(fw, kind):
    model = toy(fw, kind)
    x = inputs(fw)
    for selector in SELECT_MAIN[kind]:
        for method in ("saliency", "gradcam", "occlusion"):
            got = explain_quietly(model, x, method, output=selector)
            want = explain_quietly(plain(fw, model, by(selector)), x, method)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
            assert got.numpy().any(), (kind, selector, method)


def test_default_layer_follows_the_selected_output(fw):
    """The auxiliary head runs last; its conv is the last spatial layer, but explaining the main
    logits it gets an exactly zero gradient and is never chosen — and for the auxiliary logits
    it is the right choice. The probe is cached per selector, so the two do not mix."""
    model = toy(fw, "tuple")
    x = inputs(fw)
    main = explain_quietly(model, x, "gradcam", output=0)
    aux = explain_quietly(model, x, "gradcam", output=1, target=None)
    assert main.layers == ["body"] and aux.layers == ["aux"]
    again = explain_quietly(model, x, "gradcam", output=0)
    assert again.layers == ["body"]
    np.testing.assert_array_equal(again.numpy(), main.numpy())
    # functions are not cached (their identity says nothing about what they select)
    assert explain_quietly(model, x, "gradcam", output=lambda o: o[1], target=None).layers == ["aux"]
    assert explain_quietly(model, x, "gradcam", output=lambda o: o[0]).layers == ["body"]
    # the map equals Grad-CAM at the main block, and CAM finds the main head
    want = explain_quietly(model, x, "gradcam", output=0, layer="body")
    np.testing.assert_array_equal(main.numpy(), want.numpy())
    cam = explain_quietly(model, x, "cam", output=0)
    assert cam.layers == ["body"] and cam.head.endswith("head")


def test_default_layer_probe_runs_once_per_model_shape_and_selector(fw):
    model = toy(fw, "tuple")
    x = inputs(fw)
    passes: list[int] = []
    handle = fw.B.add_forward_hook(model, lambda *_: passes.append(1))

    def count(**kw: Any) -> int:
        del passes[:]
        explain_quietly(model, x, "gradcam", **kw)
        return len(passes)

    try:
        first, again, named = count(output=0), count(output=0), count(output=0, layer="body")
        other = count(output=1, target=[1, 0])
    finally:
        handle.remove()
    assert first == again + 1 and again == named  # the probe: one batch-1 pass, then cached
    assert other == first  # another selector, another probe


def test_default_layer_without_gradient_is_found_by_perturbation(fw):
    """A forward pass under no_grad has no gradient to probe with: the gradient-free CAMs check
    candidates by perturbing them, from the last one back, and still skip the auxiliary head."""
    inner = toy(fw, "dict")
    base = fw.nn().Module if fw.name == "torch" else fw.nn().Layer

    class NoGrad(base):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            with fw.B.no_grad():
                return self.inner(x)

    x = inputs(fw)
    got = explain_quietly(NoGrad(), x, "scorecam", output="out")
    assert got.layers == ["inner.body"]
    want = explain_quietly(inner, x, "scorecam", output="out", layer="body")
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert explain_quietly(NoGrad(), x, "eigencam", output="aux", target=[1, 0]).layers == ["inner.aux"]


@pytest.mark.parametrize("kind,fragment,hint", [  # (N, 3): N is 1 when a batch-1 pass comes first
    ("tuple", r"a tuple of 2 items \(\[0\] tensor \(\d, 3\), \[1\] tensor \(\d, 2\)\)", "output=0"),
    ("list", r"a list of 2 items", "output=0"),
    ("dict", r"a dict with 2 keys \{'out': tensor \(\d, 3\), 'aux': tensor \(\d, 2\)\}", "output='out'"),
    ("namedtuple", r"a named tuple Pair of 2 items \(logits=tensor \(\d, 3\), aux=tensor", "output='logits'"),
    ("object", r"Outputs object with tensor attributes \(\.logits tensor \(\d, 3\), \.aux", "output='logits'"),
])
def test_structured_output_without_selector_is_refused_with_its_contents(fw, kind, fragment, hint):
    for method in ("saliency", "gradcam", "lrp"):
        with pytest.raises(ModelError, match=fragment) as info:
            xplain.explain(toy(fw, kind), inputs(fw), method)
        assert hint in str(info.value)


def test_probe_passes_ignore_the_output(fw):
    """Passes that only watch layers (the layer listing, the memory probe, LRP's canonizing
    probe) run the model as it is, whatever it returns."""
    model = toy(fw, "dict")
    listed = {s.name: s for s in xplain.layers(model, (1, 3, 8, 8))}
    assert listed["body"].output_shape == (1, 4, 8, 8) and listed["body"].layout == "channels_first"
    assert listed["aux"].spatial and listed["head"].output_shape == (1, 3)
    x = inputs(fw)
    lrp = explain_quietly(model, x, "lrp", output="out")
    logits = fw.numpy(model(x)["out"])
    np.testing.assert_array_equal(np.asarray(lrp.target_output), logits[[0, 1], [2, 1]])
    occ = explain_quietly(model, x, "occlusion", output="out", max_batch=None)  # memory probe
    assert occ.numpy().any()


def test_selector_on_a_single_tensor_is_refused(fw):
    model = plain(fw, toy(fw, "tuple"), by(0))
    with pytest.raises(OptionError, match=r"returned one tensor of shape \(2, 3\).*remove output="):
        xplain.explain(model, inputs(fw), "saliency", output=0)
    # a function may transform a single tensor (here: keep two of its classes)
    got = xplain.explain(model, inputs(fw), "saliency", output=lambda out: out[:, 1:], target=0,
                         mode="raw")
    want = xplain.explain(model, inputs(fw), "saliency", target=1, mode="raw")
    np.testing.assert_array_equal(got.numpy(), want.numpy())


# ---- model zoos ----------------------------------------------------------------------------------
def test_paddle_googlenet_three_outputs(fw):
    """paddle.vision's GoogLeNet returns ``(out, aux1, aux2)`` in eval mode too, and computes the
    auxiliary heads after the main one: ``output=0`` explains ``out``, with the same numbers as a
    wrapper returning ``out``, and its default CAM layer is on the main path."""
    if fw.name != "paddle":
        pytest.skip("paddle.vision's GoogLeNet; torchvision's returns one tensor in eval mode")
    import paddle.vision.models as zoo

    model = zoo.googlenet(num_classes=10)
    model.eval()
    x = fw.tensor(np.random.default_rng(1).standard_normal((1, 3, 192, 192)))  # aux heads: >= 192
    with pytest.raises(ModelError, match=r"a tuple of 3 items \(\[0\] tensor \(1, 10\)"):
        xplain.explain(model, x, "saliency")
    for method in ("gradcam", "saliency"):
        got = explain_quietly(model, x, method, output=0, target=3)
        want = explain_quietly(plain(fw, model, by(0)), x, method, target=3)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    for output, layer in ((0, "_ince5b"), (1, "_conv_o1"), (2, "_conv_o2")):
        assert explain_quietly(model, x, "gradcam", output=output, target=3).layers == [layer]


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_aux_models_in_train_mode(fw, name):
    """torchvision's GoogLeNet and Inception3 return a named tuple with auxiliary logits only in
    train mode; xplain runs models in eval mode, so they are explained without ``output=``, equal
    to the eval-mode model, and left in train mode. ``output=0`` is refused: in eval mode there
    is no tuple to index (the first row of the logits is not what the user meant)."""
    if fw.name != "torch":
        pytest.skip("torchvision models")
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model_builder(name)(weights=None, num_classes=10,
                                                       aux_logits=True, init_weights=False)
    model.train()
    big = 299 if name == "inception_v3" else 64  # Inception3's auxiliary head needs 299 px
    with torch.no_grad():
        out = model(torch.zeros(2, 3, big, big))
    assert type(out).__name__ in ("GoogLeNetOutputs", "InceptionOutputs")
    size = 75 if name == "inception_v3" else 64  # eval mode: Inception3's smallest input
    x = fw.tensor(np.random.default_rng(2).standard_normal((2, 3, size, size)))
    got = explain_quietly(model, x, "saliency", target=[1, 4])
    assert model.training
    with pytest.raises(OptionError, match="eval mode"):
        xplain.explain(model, x, "saliency", output=0)
    assert model.training
    model.eval()
    want = explain_quietly(model, x, "saliency", target=[1, 4])
    np.testing.assert_array_equal(got.numpy(), want.numpy())
