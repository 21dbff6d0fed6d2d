"""xplain.summary: parameter and multiply-add counts against independent hand computations."""
import numpy as np
import pytest

import xplain


def _resnet18_expected(size: int = 224) -> tuple[int, int]:
    """ResNet-18 parameter and mult-add counts computed from the architecture by hand."""
    params = macs = 0

    def conv(cin, cout, k, hw_out, norm=True):
        nonlocal params, macs
        params += cout * cin * k * k
        macs += cout * hw_out * hw_out * cin * k * k
        if norm:
            bn(cout)

    def bn(c):
        nonlocal params
        params += 2 * c

    hw = (size + 2 * 3 - 7) // 2 + 1          # conv1 7x7/2
    conv(3, 64, 7, hw)
    hw = (hw + 2 - 3) // 2 + 1                # maxpool 3x3/2
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            out = (hw + 2 - 3) // s + 1
            conv(cin, cout, 3, out)
            conv(cout, cout, 3, out)
            if s != 1 or cin != cout:
                conv(cin, cout, 1, out)
            cin, hw = cout, out
    params += 512 * 1000 + 1000               # fc
    macs += 512 * 1000
    return params, macs


def test_resnet18_totals(fw):
    params, macs = _resnet18_expected()
    assert params == 11_689_512                # torchvision's documented count
    s = xplain.summary(fw.model("resnet18"), (1, 3, 224, 224))
    assert s.total_params == params
    assert s.total_mult_adds == macs == 1_814_073_344   # "1.81 G" as torchsummaryX prints
    table = str(s)
    assert "11.69 M" in table and "1.81 G" in table
    conv1 = s.rows[0]
    assert conv1.name == "conv1" and conv1.kernel_shape == (64, 3, 7, 7)
    assert conv1.output_shape == (1, 64, 112, 112) and conv1.params == 9408
    # BasicBlock calls its ReLU twice: two rows, no parameters counted
    assert sum(r.name == "layer1.0.relu" for r in s.rows) == 2
    assert s.rows[-1].output_shape == (1, 1000)


def test_small_model_by_hand_and_batch_scaling(fw):
    model = fw.sequential(fw.conv2d(3, 4, 3, padding=1, groups=1), fw.relu(), fw.flatten(),
                          fw.linear(4 * 8 * 8, 5))
    s = xplain.summary(model, (2, 3, 8, 8))
    # conv: out 2*4*8*8 = 512 elements, each 3*3*3 = 27 MACs; linear: 2*5 outputs x 256 inputs
    assert [r.mult_adds for r in s.rows] == [512 * 27, 0, 0, 10 * 256]
    assert s.total_params == (4 * 27 + 4) + (256 * 5 + 5)
    assert s.rows[3].kernel_shape == (5, 256)   # neutral (out, in) layout on every backend


def test_grouped_conv_and_no_hooks_left(fw):
    model = fw.sequential(fw.conv2d(4, 8, 3, groups=2))
    before = fw.B.snapshot(model)
    s = xplain.summary(model, (1, 4, 5, 5))
    assert s.total_mult_adds == 8 * 3 * 3 * (4 // 2) * 3 * 3
    assert fw.B.changed(model, before) == []


def test_bad_shape(fw):
    with pytest.raises(xplain.InputError, match="input_shape"):
        xplain.summary(fw.model("mlp"), (0, 784))
    assert np.isfinite(xplain.summary(fw.model("mlp"), (1, 1, 28, 28)).total_params)


def test_vit_counts_attention_and_embeddings_by_hand(fw):
    """torchvision's ViT (paddle: its port): the class token and position embedding are the
    parameters of the modules whose forward uses them, torch's MultiheadAttention computes its
    projections functionally (its row shows them), paddle's calls them as layers; both total
    the same by-hand count."""
    from transformer_zoo import tiny_vit

    model = tiny_vit(fw, image_size=48)  # patches of 8: 36 + 1 tokens, width 16, MLP 32, 2 blocks
    s = xplain.summary(model, (2, 3, 48, 48))
    e, t, m, classes = 16, 37, 32, 4
    block = 2 * (2 * e) + (4 * e * e + 4 * e) + (e * m + m) + (m * e + e)  # 2 LN, attention, MLP
    params = (3 * 8 * 8 * e + e) + e + t * e + 2 * block + 2 * e + (e * classes + classes)
    assert s.total_params == params == sum(int(np.prod(p.shape)) for p in model.parameters())
    block_macs = t * 4 * e * e + t * e * m + t * m * e  # projections, MLP (attention products: 0)
    assert s.total_mult_adds == 2 * (36 * 3 * 8 * 8 * e + 2 * block_macs + e * classes)
    rows = {r.name: r for r in s.rows}
    assert rows["encoder"].params == t * e and rows[""].params == e  # position embedding; class token


def test_swin_counts_window_projections(fw):
    """Swin's attention projections are called as modules in paddle's port and run functionally
    on their weights in torchvision's: the same totals, windows counted padded."""
    from transformer_zoo import swin

    model = swin(fw, "swin_t", tiny=True)
    s = xplain.summary(model, (1, 3, 40, 40))
    assert s.total_params == 35_744  # tiny Swin: both frameworks' own parameter counts
    patch = 10 * 10 * 16 * 3 * 4 * 4
    # a stage's block: qkv (C→3C) and proj (C→C) on the map padded to whole 4x4 windows, MLP
    # (C→4C→C) on the map itself
    def block(c, side, padded):
        return padded ** 2 * (c * 3 * c + c * c) + side ** 2 * 2 * c * 4 * c
    stage1 = 2 * block(16, 10, 12)
    merge = 5 * 5 * 64 * 32  # 10x10 → 5x5, 4·16 → 32
    stage2 = 2 * block(32, 5, 8)
    assert s.total_mult_adds == patch + stage1 + merge + stage2 + 32 * 4 == 1_766_528
