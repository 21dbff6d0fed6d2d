"""Porting torchvision weights into paddle.vision models (the paddle backend reading PyTorch
models), for cross-backend checks.

:func:`torch_to_paddle` copies a torchvision model's parameters and BatchNorm statistics into the
paddle.vision model of the same architecture, so that both compute the same function (compared
in ``tests/test_cross_foundation.py`` and ``tests/test_ports_cross.py``). Every paddle layer is
given its torchvision name by the *family's name map* below; each parameter then keeps its leaf
name, except that paddle's BatchNorm buffers ``_mean``/``_variance`` are torch's
``running_mean``/``running_var``, ``Linear`` weights are transposed (torch ``(out, in)``, paddle
``(in, out)``) and ``num_batches_tracked`` (no paddle counterpart) is dropped. A key or a shape
that does not match raises :class:`~xplain.errors.XplainError` naming it.

Families (picked from the paddle model's class, or ``family=``):

==============  ===============================================================================
family          paddle.vision ↔ torchvision
==============  ===============================================================================
identical       ResNet/ResNeXt/WideResNet, VGG(-BN), MobileNetV2 (and any model whose module
                tree matches): the same names.
densenet        121/161/169/201: the same function. paddle fuses each ReLU into its BatchNorm
                (``BatchNorm(act="relu")``); torch's last ReLU is functional. A paddle DenseNet
                built with ``dropout > 0`` is refused (see dropout below).
mobilenet_v3    small/large. paddle's Hardsigmoid (the squeeze-excitation gate) has slope
                0.1666667 (applied as float32 0.16666670143…), torch's exactly 1/6; folded into
                the gate's ``fc2`` (weight and bias × 1/(6·slope)), which moves paddle's kinks
                from ±2.9999994 to ±3: the same function.
squeezenet      1_0. torch's three max-pools use ``ceil_mode=True``, paddle's ``ceil_mode=False``:
                the same function only at input sizes where every pool window fits exactly
                (:func:`size_mismatch`: 16k + 3 and 16k + 4 px, e.g. 67, 68, 227; not 64 or
                224). 1_1 is refused: torch's first conv has padding 0, paddle's padding 1.
shufflenet_v2   x0_5, x1_0, x1_5: the same function. x2_0 is refused (paddle.vision's has 224
                stage-2 channels, torchvision's 244), and so is paddle's ``act="swish"``.
alexnet         torch average-pools conv5's map to 6×6 (``AdaptiveAvgPool2d``), paddle flattens
                it as it is: the same function only where that map is already 6×6 (223–254 px,
                :func:`size_mismatch`); at most other sizes paddle's ``_fc6`` refuses the input.
inception_v3    BatchNorm ε is 1e-3 in torch, 1e-5 in paddle: folded into the running variance
                (below). torch's ``AuxLogits`` head runs only in training and is not ported.
                ``transform_input=True`` (a per-channel input rescaling that paddle's model
                lacks) is refused. Needs ≥ 75 px.
googlenet       refused: paddle.vision's GoogLeNet is another network (no BatchNorm and no conv
                bias, ReLU only after each Inception concat, 5×5 kernels where torchvision has
                3×3, floor- instead of ceil-mode pools, aux heads always run and returned).
==============  ===============================================================================

Folds. Where paddle's model computes a fixed rescaling that torch's does not, the port puts its
inverse into the weights of the layer that follows, so that the paddle model (its code
untouched) computes torch's function; exact in float64, within one rounding of the storage
dtype otherwise (so port a float64 torch model into a float64 paddle model to compare in
float64):

* paddle's ``Dropout(mode="downscale_in_infer")`` multiplies by ``1 − p`` (computed in float32)
  in eval mode; torch's dropout is the identity there. The layer it feeds gets its weight
  ÷ (1 − p): squeezenet ``_conv9`` (p = 0.5), alexnet ``_fc6`` and ``_fc7`` (0.5),
  inception_v3 ``fc`` (0.2). Such a dropout anywhere else is refused.
* BatchNorm ε: ``(x − μ)/√(v + ε_t) = (x − μ)/√(v' + ε_p)`` with ``v' = v + ε_t − ε_p``, ε_p as
  paddle applies it (a float32 attribute). This covers inception_v3's 1e-3 vs 1e-5, and the
  float32 rounding of paddle's ε everywhere (1e-3 → 1.0000000475e-3 in mobilenet_v3; for
  float32 weights the latter is below the resolution of ``v``, a no-op).
* mobilenet_v3's Hardsigmoid slope (above).

Every mapped conv must also have the same stride, padding, dilation and groups in both.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xplain.errors import XplainError

from .models import _linear_weights as _paddle_linear_weights

#: paddle parameter/buffer leaf name → torch's
_LEAF = {"_mean": "running_mean", "_variance": "running_var"}

Rule = tuple[str, Any]  # (full-match regex on the paddle layer path, torch path | callable | None)


def _lookup(path: str, rules: list[Rule]) -> str | None:
    """The torch module path for paddle layer ``path``: the first rule whose pattern matches the
    whole path; its replacement is a ``re`` template, a function of the match, or ``None`` (the
    layer has no torch module: a functional op, a container torch does not have)."""
    for pattern, repl in rules:
        m = re.fullmatch(pattern, path)
        if m:
            if repl is None:
                return None
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def _minus1(group: str) -> int:
    return int(group) - 1


# ---- name maps: paddle layer path → torchvision module path ---------------------------------
def _identical(path: str, paddle_model: Any) -> str | None:
    return path


_DENSENET: list[Rule] = [
    # stem: ConvBNLayer(conv, bn+relu), max-pool
    (r"conv1_func\._conv", "features.conv0"),
    (r"conv1_func\._batch_norm", "features.norm0"),
    (r"pool2d_max", "features.pool0"),
    # dense blocks: paddle numbers them from 2 (db_conv_2 … db_conv_5), torch from 1
    (r"db_conv_(\d+)", lambda m: f"features.denseblock{_minus1(m[1])}"),
    (r"db_conv_(\d+)\.conv\d+_(\d+)", lambda m: f"features.denseblock{_minus1(m[1])}.denselayer{m[2]}"),
    (r"db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func(\d)\._batch_norm",
     lambda m: f"features.denseblock{_minus1(m[1])}.denselayer{m[2]}.norm{m[3]}"),
    (r"db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func(\d)\._conv",
     lambda m: f"features.denseblock{_minus1(m[1])}.denselayer{m[2]}.conv{m[3]}"),
    # transitions tr_conv2_blk … tr_conv4_blk ↔ transition1 … transition3
    (r"tr_conv(\d+)_blk", lambda m: f"features.transition{_minus1(m[1])}"),
    (r"tr_conv(\d+)_blk\.conv_ac_func\._batch_norm", lambda m: f"features.transition{_minus1(m[1])}.norm"),
    (r"tr_conv(\d+)_blk\.conv_ac_func\._conv", lambda m: f"features.transition{_minus1(m[1])}.conv"),
    (r"tr_conv(\d+)_blk\.pool2d_avg", lambda m: f"features.transition{_minus1(m[1])}.pool"),
    # head: bn+relu, (functional pool in torch), classifier
    (r"batch_norm", "features.norm5"),
    (r"out", "classifier"),
]


def _densenet(path: str, paddle_model: Any) -> str | None:
    return _lookup(path, _DENSENET)


#: the parts of paddle's MobileNetV3 InvertedResidual, in the order torch's ``block`` holds them
_MOBILENET_V3_PARTS = ("expand_conv", "bottleneck_conv", "mid_se", "linear_conv")


def _mobilenet_v3(path: str, paddle_model: Any) -> str | None:
    """``conv`` → ``features.0``; ``blocks.i`` → ``features.{i+1}``; ``lastconv`` →
    ``features.{n+1}``; inside a block, torch's ``block`` Sequential holds the parts paddle
    names (expand_conv only where the block expands, mid_se only where it has SE), in order."""
    n = len(paddle_model.blocks)
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+?)((?:\.\w+)*)", path)
    if m and m[2] in _MOBILENET_V3_PARTS:
        block = paddle_model.blocks[int(m[1])]
        present = [p for p in _MOBILENET_V3_PARTS if hasattr(block, p)]
        return f"features.{int(m[1]) + 1}.block.{present.index(m[2])}{m[3]}"
    return _lookup(path, [
        (r"conv((?:\.\d+)?)", r"features.0\1"),
        (r"blocks\.(\d+)", lambda m: f"features.{int(m[1]) + 1}"),
        (r"blocks", None),
        (r"lastconv((?:\.\d+)?)", rf"features.{n + 1}\1"),
        (r"(avgpool|classifier(?:\.\d+)?)", r"\1"),
    ])


#: position of the k-th Fire module in torchvision's ``features`` (paddle: ``_conv1`` … ``_conv8``)
_SQUEEZENET_FIRES = {"1.0": (3, 4, 5, 7, 8, 9, 10, 12), "1.1": (3, 4, 6, 7, 9, 10, 11, 12)}


def _squeezenet(path: str, paddle_model: Any) -> str | None:
    fires = _SQUEEZENET_FIRES[paddle_model.version]
    fire = lambda m: f"features.{fires[int(m[1]) - 1]}"  # noqa: E731
    return _lookup(path, [
        (r"_conv", "features.0"),
        (r"_conv([1-8])", fire),
        (r"_conv([1-8])\._conv\._conv", lambda m: fire(m) + ".squeeze"),
        (r"_conv([1-8])\._conv_path1\._conv", lambda m: fire(m) + ".expand1x1"),
        (r"_conv([1-8])\._conv_path2\._conv", lambda m: fire(m) + ".expand3x3"),
        (r"_drop", "classifier.0"),
        (r"_conv9", "classifier.1"),
        (r"_avg_pool", "classifier.3"),
        # paddle's one `_pool` is called three times (torch: three MaxPool2d); MakeFireConv
        # containers have no torch module
    ])


def _shufflenet_v2(path: str, paddle_model: Any) -> str | None:
    """Blocks ``{s}_{i}`` ↔ ``stage{s}.{i-1}``. Each paddle ConvNormActivation (conv, bn[, relu])
    is a run of torch's branch Sequential starting at the offset below."""
    branch = {  # paddle part → (torch branch, offset of its conv in that Sequential)
        "_conv_dw_1": ("branch1", 0), "_conv_linear_1": ("branch1", 2),
        "_conv_pw_2": ("branch2", 0), "_conv_dw_2": ("branch2", 3), "_conv_linear_2": ("branch2", 5),
        "_conv_pw": ("branch2", 0), "_conv_dw": ("branch2", 3), "_conv_linear": ("branch2", 5)}

    def part(m: re.Match) -> str | None:
        if m[3] not in branch:
            return None
        name, offset = branch[m[3]]
        return f"stage{m[1]}.{_minus1(m[2])}.{name}.{offset + int(m[4])}"

    return _lookup(path, [
        (r"_conv1((?:\.\d)?)", r"conv1\1"),
        (r"_max_pool", "maxpool"),
        (r"(\d)_(\d+)", lambda m: f"stage{m[1]}.{_minus1(m[2])}"),
        (r"(\d)_(\d+)\.(\w+)\.(\d)", part),
        (r"_last_conv((?:\.\d)?)", r"conv5\1"),
        (r"_fc", "fc"),
        # _pool2d_avg: torch takes x.mean([2, 3]), no module
    ])


_ALEXNET: list[Rule] = [
    (r"_conv1\._conv", "features.0"), (r"_conv1\.relu", "features.1"), (r"_conv1\._pool", "features.2"),
    (r"_conv2\._conv", "features.3"), (r"_conv2\.relu", "features.4"), (r"_conv2\._pool", "features.5"),
    (r"_conv3", "features.6"),  # its ReLU (features.7) is functional in paddle
    (r"_conv4", "features.8"),  # … and features.9
    (r"_conv5\._conv", "features.10"), (r"_conv5\.relu", "features.11"), (r"_conv5\._pool", "features.12"),
    (r"_drop1", "classifier.0"), (r"_fc6", "classifier.1"),
    (r"_drop2", "classifier.3"), (r"_fc7", "classifier.4"), (r"_fc8", "classifier.6"),
]


def _alexnet(path: str, paddle_model: Any) -> str | None:
    return _lookup(path, _ALEXNET)


#: torchvision's names of paddle's ``inception_block_list.0`` … ``.10``
_INCEPTION_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                    "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def _inception_v3(path: str, paddle_model: Any) -> str | None:
    """Each paddle ConvNormActivation ``X`` (``X.0`` conv, ``X.1`` BatchNorm, ``X.2`` ReLU) is
    torch's BasicConv2d ``X.conv``/``X.bn`` (its ReLU is functional). Paddle names a block's
    pooling branch conv ``branch_pool_conv`` and its pooling layer ``branch_pool``; torch names
    the conv ``branch_pool`` and pools functionally."""
    mixed = lambda m: _INCEPTION_MIXED[int(m[1])]  # noqa: E731
    return _lookup(path, [
        (r"inception_stem\.conv_(\w+?)", r"Conv2d_\1"),
        (r"inception_stem\.conv_(\w+?)\.0", r"Conv2d_\1.conv"),
        (r"inception_stem\.conv_(\w+?)\.1", r"Conv2d_\1.bn"),
        (r"inception_block_list\.(\d+)", mixed),
        (r"inception_block_list\.(\d+)\.branch_pool", None),
        (r"inception_block_list\.(\d+)\.branch_pool_conv", lambda m: f"{mixed(m)}.branch_pool"),
        (r"inception_block_list\.(\d+)\.branch_pool_conv\.0", lambda m: f"{mixed(m)}.branch_pool.conv"),
        (r"inception_block_list\.(\d+)\.branch_pool_conv\.1", lambda m: f"{mixed(m)}.branch_pool.bn"),
        (r"inception_block_list\.(\d+)\.(branch\w+)", lambda m: f"{mixed(m)}.{m[2]}"),
        (r"inception_block_list\.(\d+)\.(branch\w+)\.0", lambda m: f"{mixed(m)}.{m[2]}.conv"),
        (r"inception_block_list\.(\d+)\.(branch\w+)\.1", lambda m: f"{mixed(m)}.{m[2]}.bn"),
        (r"avg_pool", "avgpool"),
        (r"(dropout|fc)", r"\1"),
        # inception_stem.max_pool is called twice (torch: maxpool1, maxpool2)
    ])


# ---- per-family refusals ----------------------------------------------------------------------
def _check_googlenet(torch_model: Any, paddle_model: Any) -> None:
    raise XplainError(
        "paddle.vision's GoogLeNet is not torchvision's: it has no BatchNorm and no conv bias "
        "(torchvision: BatchNorm after every conv), no ReLU after each conv but one after each "
        "Inception concat, 5x5 kernels in the third branch (torchvision: 3x3), floor- instead of "
        "ceil-mode max-pools, and always returns (logits, aux1, aux2); its weights cannot be "
        "ported from torchvision's googlenet")


def _check_inception_v3(torch_model: Any, paddle_model: Any) -> None:
    if getattr(torch_model, "transform_input", False):
        raise XplainError(
            "the torch Inception3 has transform_input=True: it rescales each input channel "
            "(x·std/0.5 + (mean − 0.5)/0.5) before the first conv, which paddle.vision's "
            "InceptionV3 does not; build it with transform_input=False to port it")


def _check_shufflenet_v2(torch_model: Any, paddle_model: Any) -> None:
    from paddle import nn

    acts = {type(m).__name__ for _, m in paddle_model.named_sublayers()
            if isinstance(m, (nn.Swish, nn.ReLU))}
    if acts != {"ReLU"}:
        raise XplainError(f"the paddle ShuffleNetV2 uses {sorted(acts)} activations; torchvision's "
                          f"uses ReLU (paddle's shufflenet_v2_swish has no torchvision counterpart)")
    want = getattr(torch_model, "_stage_out_channels", None)
    blocks = dict(paddle_model.named_children())
    have = [int(paddle_model._conv1[0]._out_channels)]
    have += [2 * int(blocks[f"{s}_1"]._conv_linear_1[0]._out_channels) for s in (2, 3, 4)]
    have.append(int(paddle_model._last_conv[0]._out_channels))
    if want is not None and list(want) != have:
        raise XplainError(
            f"the ShuffleNetV2 widths differ: torch {list(want)}, paddle {have} (paddle.vision's "
            f"shufflenet_v2_x2_0 has 224 stage-2 channels, torchvision's 244); not the same "
            f"architecture")


# ---- folds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fold:
    """Multiply the ported weight (and bias, if ``bias``) of paddle layer ``layer`` by ``factor``."""

    layer: str
    factor: float
    bias: bool
    why: str


def _dropout_factor(dropout: Any) -> float:
    """What paddle's dropout multiplies by in eval mode: ``1 − p`` computed in float32 for
    ``downscale_in_infer`` (measured: p = 0.2 gives 0.800000011920929 for float64 tensors)."""
    if getattr(dropout, "mode", None) != "downscale_in_infer" or not dropout.p:
        return 1.0
    return float(np.float32(1.0) - np.float32(dropout.p))


def _mobilenet_v3_folds(paddle_model: Any) -> list[Fold]:
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    gate = F.hardsigmoid(paddle.to_tensor(np.array([0.0, 1.0])))  # slope as paddle applies it
    slope = float(gate[1] - gate[0])
    return [Fold(f"{name}.fc2", 1.0 / (6.0 * slope), True, f"Hardsigmoid slope {slope!r} vs 1/6")
            for name, m in paddle_model.named_sublayers()
            if type(m).__name__ == "SqueezeExcitation" and isinstance(m.scale_activation, nn.Hardsigmoid)]


# ---- the family table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """How one architecture family is ported.

    Attributes:
        name: the ``family=`` value.
        paddle_classes: paddle.vision class names (or a base class name) that select it.
        rename: paddle layer path → torch module path (``None``: no torch module).
        check: raises :class:`XplainError` for a pair that cannot compute the same function.
        skip_torch: torch state-dict key prefixes that have no paddle counterpart and do not
            take part in eval-mode inference (they are dropped, not ported).
        dropouts: ``(paddle dropout, the layer it feeds)``: eval-mode scaling folded into the
            second (see the module docstring).
        folds: further :class:`Fold` s, computed from the paddle model.
    """

    name: str
    paddle_classes: tuple[str, ...]
    rename: Callable[[str, Any], str | None]
    check: Callable[[Any, Any], None] | None = None
    skip_torch: tuple[str, ...] = ()
    dropouts: tuple[tuple[str, str], ...] = ()
    folds: Callable[[Any], list[Fold]] | None = None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("identical", ("ResNet", "VGG", "MobileNetV2"), _identical),
    Family("densenet", ("DenseNet",), _densenet),
    Family("mobilenet_v3", ("MobileNetV3",), _mobilenet_v3, folds=_mobilenet_v3_folds),
    Family("squeezenet", ("SqueezeNet",), _squeezenet, dropouts=(("_drop", "_conv9"),)),
    Family("shufflenet_v2", ("ShuffleNetV2",), _shufflenet_v2, _check_shufflenet_v2),
    Family("alexnet", ("AlexNet",), _alexnet, dropouts=(("_drop1", "_fc6"), ("_drop2", "_fc7"))),
    Family("inception_v3", ("InceptionV3",), _inception_v3, _check_inception_v3, ("AuxLogits.",),
           dropouts=(("dropout", "fc"),)),
    Family("googlenet", ("GoogLeNet",), _identical, _check_googlenet),
)}


def family_of(paddle_model: Any, family: str | None = None) -> Family:
    """The :class:`Family` named ``family``, or the one whose class ``paddle_model`` is (or
    derives from); ``identical`` for any other model."""
    if family is not None:
        if family not in FAMILIES:
            raise XplainError(f"unknown family {family!r}; use one of {sorted(FAMILIES)}")
        return FAMILIES[family]
    for cls in type(paddle_model).__mro__:
        for fam in FAMILIES.values():
            if cls.__name__ in fam.paddle_classes:
                return fam
    return FAMILIES["identical"]


def layer_map(torch_model: Any, paddle_model: Any, *, family: str | None = None) -> dict[str, str]:
    """``{paddle layer name: torch module name}`` for every paddle layer whose torch counterpart
    exists (the names to pass as ``layer=`` to explain the same tensor in both)."""
    fam = family_of(paddle_model, family)
    torch_names = {n for n, _ in torch_model.named_modules() if n}
    out = {}
    for name, _ in paddle_model.named_sublayers():
        tname = fam.rename(name, paddle_model)
        if tname in torch_names:
            out[name] = tname
    return out


def folds(paddle_model: Any, *, family: str | None = None) -> list[Fold]:
    """The rescalings :func:`torch_to_paddle` puts into ``paddle_model``'s weights. Raises
    :class:`XplainError` for an eval-mode dropout scaling that no fold covers."""
    fam = family_of(paddle_model, family)
    layers = dict(paddle_model.named_sublayers())
    out = []
    for drop, target in fam.dropouts:
        factor = _dropout_factor(layers[drop]) if drop in layers else 1.0
        if factor != 1.0 and target in layers:
            out.append(Fold(target, 1.0 / factor, False, f"{drop}: paddle's eval-mode dropout × {factor!r}"))
    covered = {d for d, _ in fam.dropouts}
    stray = sorted(n for n, m in layers.items() if n not in covered and _dropout_factor(m) != 1.0)
    if stray:
        raise XplainError(
            f"paddle dropout {stray[:3]} scales its input by 1 − p in eval mode "
            f"(mode='downscale_in_infer'; torch's dropout does not) and no fold is known for it "
            f"in family {fam.name!r}; build the paddle model without dropout")
    return out + (fam.folds(paddle_model) if fam.folds else [])


def torch_to_paddle(torch_model: Any, paddle_model: Any, *, family: str | None = None) -> Any:
    """Copy ``torch_model``'s weights into ``paddle_model``, the paddle.vision model of the same
    architecture, so that both compute the same function (see the module docstring for the
    families, the folds and what still differs).

    Values are converted to each paddle tensor's dtype: port a float64 torch model into a
    float64 paddle model (``.to(dtype="float64")`` first) to keep the folds exact.
    Raises :class:`~xplain.errors.XplainError` naming any key, shape or conv geometry that does
    not match, or an architectural difference that cannot be ported. Returns the paddle model,
    in eval mode.
    """
    fam = family_of(paddle_model, family)
    if fam.check is not None:
        fam.check(torch_model, paddle_model)
    scale = folds(paddle_model, family=fam.name)
    pair = f"torch {type(torch_model).__name__} → paddle {type(paddle_model).__name__}"
    src = _split_in_proj({k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()
                          if not k.endswith("num_batches_tracked") and not k.startswith(fam.skip_torch)})
    tmods = dict(torch_model.named_modules())
    pmods = dict(paddle_model.named_sublayers())
    linear = _paddle_linear_weights(paddle_model)
    new: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for key, value in paddle_model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        tlayer = fam.rename(layer, paddle_model) if layer else ""
        tkey = None if tlayer is None else ".".join(filter(None, (tlayer, _LEAF.get(leaf, leaf))))
        if tkey not in src:
            raise XplainError(f"paddle parameter {key!r} has no torch counterpart {tkey!r} "
                              f"({pair}, family {fam.name!r}); the two models are not the same "
                              f"architecture")
        arr = src.pop(tkey)
        if key in linear:
            arr = arr.T
        want = tuple(int(s) for s in value.shape)
        if arr.shape != want:
            raise XplainError(f"shape mismatch for {key!r}: torch {tkey!r} {arr.shape} vs paddle "
                              f"{want} ({pair}); not the same architecture")
        if leaf == "weight":
            _check_conv(tmods.get(tlayer), pmods.get(layer), tlayer, layer)
        if leaf == "_variance":
            arr = _fold_epsilon(arr, tmods.get(tlayer), pmods.get(layer))
        new[key] = arr
        dtypes[key] = str(value.dtype).rsplit(".", 1)[-1]
    if src:
        raise XplainError(f"torch parameters without a paddle counterpart ({pair}, family "
                          f"{fam.name!r}): {sorted(src)[:5]}")
    for fold in scale:
        for leaf in ("weight", "bias") if fold.bias else ("weight",):
            key = f"{fold.layer}.{leaf}"
            if key in new:
                new[key] = new[key].astype(np.float64) * fold.factor
    paddle_model.set_state_dict({k: np.ascontiguousarray(a.astype(dtypes[k], copy=False))
                                 for k, a in new.items()})
    paddle_model.eval()
    return paddle_model


def _split_in_proj(src: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch's ``nn.MultiheadAttention`` packs the query, key and value projections into
    ``in_proj_weight`` ``(3E, E)`` and ``in_proj_bias``; paddle's ``MultiHeadAttention`` has
    ``q_proj``/``k_proj``/``v_proj`` Linear layers: the packed keys are split into those."""
    out = {}
    for key, value in src.items():
        base, _, leaf = key.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            for part, name in zip(np.split(value, 3, axis=0), ("q_proj", "k_proj", "v_proj")):
                out[".".join(filter(None, (base, name, leaf[len("in_proj_"):])))] = part
        else:
            out[key] = value
    return out


def _pair(v: Any) -> Any:
    if isinstance(v, str):
        return v
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(int(i) for i in (v * 2 if len(v) == 1 else v))


def _check_conv(torch_conv: Any, paddle_conv: Any, tname: str, pname: str) -> None:
    """Refuse a mapped conv pair whose stride, padding, dilation or groups differ."""
    if not hasattr(torch_conv, "stride") or not hasattr(paddle_conv, "_stride"):
        return
    ppad = (paddle_conv._updated_padding if getattr(paddle_conv, "_padding_algorithm", "") == "EXPLICIT"
            else paddle_conv._padding)
    for what, t, p in (("stride", torch_conv.stride, paddle_conv._stride),
                       ("padding", torch_conv.padding, ppad),
                       ("dilation", torch_conv.dilation, paddle_conv._dilation),
                       ("groups", torch_conv.groups, paddle_conv._groups)):
        if _pair(t) != _pair(p):
            raise XplainError(f"conv {what} differs: torch {tname!r} {_pair(t)}, paddle {pname!r} "
                              f"{_pair(p)}; the two models are not the same architecture")


def _fold_epsilon(var: np.ndarray, torch_bn: Any, paddle_bn: Any) -> np.ndarray:
    """Running variance for paddle's BatchNorm so that ``var' + ε_paddle = var + ε_torch``, with
    ε_paddle as paddle applies it (a float32 attribute: 1e-3 → 1.0000000475e-3, which would
    scale every normalisation by 1 − 2.4e-11 and, coherently over mobilenet_v3's ~50 of them,
    move float64 logits by 2e-9). Below float32's resolution of ``var`` when ε_t = ε_p nominally:
    a no-op for float32 weights."""
    eps_t = getattr(torch_bn, "eps", None)
    eps_p = getattr(paddle_bn, "_epsilon", None)
    if eps_t is None or eps_p is None or float(eps_t) == float(np.float32(eps_p)):
        return var
    return var.astype(np.float64) + (float(eps_t) - float(np.float32(eps_p)))


# ---- input sizes ------------------------------------------------------------------------------
def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _pool_out(n: int, k: int, s: int, ceil: bool) -> int:
    out = (math.ceil if ceil else math.floor)((n - k) / s) + 1
    if ceil and (out - 1) * s >= n:  # torch: the last window must start inside the input
        out -= 1
    return out


def size_mismatch(paddle_model: Any, size: int | tuple[int, int], *,
                  family: str | None = None) -> str | None:
    """Why the ported pair computes different functions on ``size`` (``h`` or ``(h, w)``) inputs,
    or ``None`` where it does not on account of size (squeezenet's pooling, alexnet's missing
    adaptive pool; the other families have no size-dependent difference)."""
    h, w = (size, size) if isinstance(size, int) else size
    fam = family_of(paddle_model, family).name
    if fam == "squeezenet":
        k, s, p, pools = (7, 2, 0, (0, 3, 7)) if paddle_model.version == "1.0" else (3, 2, 1, (0, 2, 4))
        for dim, n in (("height", h), ("width", w)):
            n = _conv_out(n, k, s, p)
            for after in pools:
                t, q = _pool_out(n, 3, 2, True), _pool_out(n, 3, 2, False)
                if t != q:
                    where = "the first conv" if after == 0 else f"Fire module {after}"
                    return (f"squeezenet {paddle_model.version}: the max-pool after {where} sees "
                            f"{dim} {n}; torch (ceil_mode) gives {t}, paddle {q}")
                n = t
        return None
    if fam == "alexnet":
        dims = []
        for n in (h, w):
            n = _pool_out(_conv_out(n, 11, 4, 2), 3, 2, False)
            n = _pool_out(_conv_out(n, 5, 1, 2), 3, 2, False)
            dims.append(_pool_out(n, 3, 2, False))
        if dims != [6, 6]:
            return (f"alexnet: conv5's pooled map is {dims[0]}x{dims[1]}; torch average-pools it "
                    f"to 6x6 (AdaptiveAvgPool2d), paddle flattens it as it is")
        return None
    return None
