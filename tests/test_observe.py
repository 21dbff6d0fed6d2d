"""The observation pass (xplain/observe.py): what it records, checked against hand-computed numbers
on ResNet-18 of each zoo (random weights, 32 px), and that every client — LRP's canonisation, the
CAM default layer, the memory estimate, the layer listing and the summary — shares one forward
pass per model and input shape."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import xplain
from xplain.guard import borrowed
from xplain.methods.cam.target import default_layer
from xplain.methods.lrp import canonize
from xplain.observe import observe_model
from xplain.run import Run

SIZE = 32


def _x(fw, batch=1):
    return fw.tensor(np.random.default_rng(3).standard_normal((batch, 3, SIZE, SIZE)))


def _observe(fw, model, x):
    B = fw.B
    with B.gradient_lock(), borrowed(B, model):
        return observe_model(B, model, x, B.layers(model))


def _counting(fw, model):
    """A forward hook on the root that counts the model's forward passes."""
    passes: list[int] = []
    return passes, fw.B.add_forward_hook(model, lambda *_: passes.append(1))


# ResNet-18 at 32 px, one sample: output elements of every leaf call, by hand.
# stem: conv1, bn1, relu at 64x16x16, maxpool to 64x8x8; per stage a block of 6 leaf calls (conv1,
# bn1, relu, conv2, bn2, relu again) plus 2 for the downsampling conv and bn in the first block of
# stages 2-4; then avgpool (512) and fc (1000).
_ELEMENTS = (3 * 64 * 16 * 16 + 64 * 8 * 8 + 12 * 64 * 8 * 8 + 14 * 128 * 4 * 4 + 14 * 256 * 2 * 2
             + 14 * 512 * 1 * 1 + 512 + 1000)


def test_resnet18_observed_numbers(fw):
    model = fw.model("resnet18")
    obs = _observe(fw, model, _x(fw))
    calls = {}
    for c in obs.calls:
        calls.setdefault(c.name, []).append(c)
    conv1, bn1 = calls["conv1"][0], calls["bn1"][0]
    assert [c.name for c in obs.calls[:5]] == ["conv1", "bn1", "relu", "maxpool", "layer1.0.conv1"]
    assert [c.index for c in obs.calls] == list(range(len(obs.calls)))
    assert conv1.inputs[0].token == obs.input.token == 0 and conv1.input_views_model_input
    assert conv1.output.shape == (1, 64, 16, 16) and conv1.output.dtype == "float32"
    assert conv1.output.nbytes == 4 * 64 * 16 * 16 == 65536
    assert bn1.inputs[0].token == conv1.output.token  # BatchNorm reads the conv's tensor itself
    assert conv1.input_nonneg is False  # normal noise
    assert calls["layer1.0.conv1"][0].input_nonneg is True  # after ReLU and max-pool
    # BasicBlock calls its one ReLU twice: after bn1 and after the residual sum
    relu = calls["layer1.0.relu"]
    assert len(relu) == 2 and obs.call_counts()["layer1.0.relu"] == 2
    order = [calls[n][0].index for n in ("layer1.0.bn1",)] + [relu[0].index] + [
        calls[n][0].index for n in ("layer1.0.conv2", "layer1.0.bn2")] + [relu[1].index]
    assert order == sorted(order) and order[-1] - order[0] == 4
    block = calls["layer1.0"][0]
    assert not block.leaf and block.index == relu[1].index + 1
    assert {c.name for c in obs.calls[block.first_inner:block.index]} == {
        "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2"}
    assert obs.calls[-1].name == "" and obs.calls[-1].output.shape == (1, 1000)
    # 60 leaf calls (4 stem, 12 in layer1, 14 in each later stage, avgpool, fc) and 16 containers
    # (8 blocks, 3 downsampling Sequentials, 4 stages, the root)
    assert sum(c.leaf for c in obs.calls) == 60 and len(obs.calls) == 76
    assert obs.leaf_output_bytes() == (4 * _ELEMENTS, 65536) == (616352, 65536)
    # layouts and the scores check: layer4 is 1x1 at 32 px, so layer3 (2x2) is the last candidate
    assert calls["layer3"][0].layout == "channels_first" and calls["layer3"][0].output.shape == (1, 256, 2, 2)
    assert obs.scored and dict(obs.feeds) == {"layer3": True}
    # no tensors kept, nothing mutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.calls = ()
    with pytest.raises(TypeError):
        obs.feeds["layer2"] = True


def test_clients_agree_with_the_observation(fw):
    model = fw.model("resnet18")
    x = _x(fw, batch=2)
    B = fw.B
    with B.gradient_lock(), borrowed(B, model):
        run = Run(B, model, x, None, method="lrp")
        found = canonize.probe(run)
        assert run.per_sample_bytes() == 2 * (616352 + 4 * 3 * SIZE * SIZE)
        assert default_layer(Run(B, model, x, None, method="gradcam")).name == "layer3"
    assert (found.per_sample_bytes, found.largest_bytes) == (616352, 65536)
    assert found.calls["layer1.0.relu"] == 2 and found.order[:3] == ("conv1", "bn1", "relu")
    assert found.merged["conv1"] == "bn1" and found.first == "conv1" and found.first_takes_input
    assert found.input_users == {"conv1"} and "layer1.0.conv1" in found.nonneg_inputs
    # torchvision's BasicBlock adds the identity to bn2's output in place (and its in-place ReLU
    # returns that tensor too); paddle.vision's `+=` makes a new tensor
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert found.modified_outputs == ({f"{b}.{n}" for b in blocks for n in ("bn2", "relu")}
                                      if fw.name == "torch" else set())
    listed = {s.name: s for s in xplain.layers(model, (2, 3, SIZE, SIZE))}
    assert listed["layer3"].output_shape == (2, 256, 2, 2) and listed["layer3"].spatial
    assert listed["layer1.0.relu"].calls == 2 and listed["layer3"].feeds is None  # a listing
    s = xplain.summary(model, (2, 3, SIZE, SIZE))
    assert s.rows[0].output_shape == (2, 64, 16, 16)
    assert s.rows[0].mult_adds == 2 * 64 * 16 * 16 * 3 * 7 * 7


def test_one_pass_for_every_client(fw):
    """LRP's probe, the CAM default layer, the memory estimate, the summary and the listing of
    one model and input shape cost one forward pass together, in either order."""
    B = fw.B
    for lrp_first in (True, False):
        model = fw.model("resnet18")
        x = _x(fw, batch=2)
        passes, handle = _counting(fw, model)
        try:
            if not lrp_first:
                xplain.summary(model, (1, 3, SIZE, SIZE))
                xplain.layers(model, (4, 3, SIZE, SIZE))
            with B.gradient_lock(), borrowed(B, model):
                canonize.probe(Run(B, model, x, None, method="lrp"), merge_batchnorm=True)
                canonize.probe(Run(B, model, x, None, method="lrp"), merge_batchnorm=False)
                cam = Run(B, model, x, None, method="gradcam")
                assert default_layer(cam).name == "layer3"
                assert cam.per_sample_bytes_known
                Run(B, model, x[:1], None, method="occlusion").per_sample_bytes()
            xplain.summary(model, (1, 3, SIZE, SIZE))
            xplain.layers(model, (1, 3, SIZE, SIZE))
        finally:
            handle.remove()
        assert len(passes) == 1


def test_one_pass_across_explanations(fw):
    """``explain`` LRP, then Grad-CAM with the default layer, then the summary: one observation
    pass in all, the rest is each method's own passes (counted on a second round, when
    everything is cached)."""
    model = fw.model("resnet18")
    x = _x(fw, batch=2)
    passes, handle = _counting(fw, model)

    def count(call) -> int:
        del passes[:]
        call()
        return len(passes)

    calls = (lambda: xplain.explain(model, x, "lrp"),
             lambda: xplain.explain(model, x, "gradcam", target=[1, 2], relu=False),
             lambda: xplain.summary(model, (1, 3, SIZE, SIZE)))
    try:
        first = [count(c) for c in calls]
        again = [count(c) for c in calls]
    finally:
        handle.remove()
    assert again[2] == 0 and first[1:] == again[1:]
    assert first[0] == again[0] + 1


def test_without_relu_reader_replaces_the_cached_probe(fw):
    model = fw.sequential(fw.conv2d(3, 4, 3, padding=1), fw.relu(), fw.flatten(),
                          fw.linear(4 * 8 * 8, 5))
    x = fw.tensor(np.random.default_rng(0).standard_normal((1, 3, 8, 8)))
    run = Run(fw.B, model, x, None, method="lrp")
    found = canonize.probe(run)
    assert found.feeds_relu == {"0"} and isinstance(found.feeds_relu, frozenset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.first = None
    fixed = canonize.without_relu_reader(run, found, ["0"], merge_batchnorm=True)
    assert fixed.feeds_relu == frozenset() and found.feeds_relu == {"0"}
    assert dataclasses.replace(fixed, feeds_relu=found.feeds_relu) == found
    assert canonize.probe(Run(fw.B, model, x, None, method="lrp")) is fixed
    assert canonize.probe(run, merge_batchnorm=False) is not fixed  # another key


def test_hooks_removed_and_model_unchanged_also_on_error(fw):
    model = fw.sequential(fw.conv2d(3, 4, 3, padding=1), fw.relu(), fw.flatten(),
                          fw.linear(4 * 8 * 8, 5))
    before = fw.model_state(model)
    with pytest.raises(xplain.InputError, match="forward pass failed"):
        xplain.layers(model, (1, 3, 9, 9))  # the linear layer expects 8x8 maps
    with pytest.raises(xplain.InputError):
        xplain.summary(model, (1, 3, 9, 9))
    fw.assert_same_state(before, fw.model_state(model))
    xplain.summary(model, (1, 3, 8, 8))
    xplain.explain(model, fw.tensor(np.ones((1, 3, 8, 8))), "lrp", target=0)
    fw.assert_same_state(before, fw.model_state(model))
