"""Which axes of a feature map hold the channels: ``(N, C, h, w)`` or ``(N, h, w, C)``, and
where a transformer's token sequence ``(N, T, C)`` holds its grid (:func:`token_layout`).

Proven, never guessed (docs/architecture.md §7): from the layer's own kind and parameters
(:func:`own_layout`), from where the map lies on the input's grid (:func:`plausible_layouts`),
and from the tensor it was computed from (the observation pass, :mod:`xplain.observe`, tracks
that by identity). :func:`decide_layout` weighs the evidence. Used by the layer listing
(:mod:`xplain.layers`), the CAM family's layer choice and its captures.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Sequence

#: Pooling layers that end a network's feature extractor. Their (often constant, upsampled)
#: output is never a useful CAM layer, so the automatic choice skips them.
HEAD_POOLS = ("adaptive_avgpool", "adaptive_maxpool")

#: The two ways a 4-D feature map can hold its axes: ``(N, C, h, w)`` (convolutions, the
#: convention of xplain's image inputs) and ``(N, h, w, C)`` (what a linear layer or a LayerNorm
#: over the last axis produces: Swin, ConvNeXt's inner blocks).
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST)

#: A token sequence ``(N, T, C)``: ``k`` prefix tokens (class, distillation, registers) and then
#: an ``h × w`` grid of patch tokens in row-major order, written ``"tokens:k:hxw"``
#: (:func:`token_layout`); ``layout="tokens"`` asks for it to be detected.
TOKENS = "tokens"
#: Kinds whose 3-D output is not a token sequence: a 1-D convolution's ``(N, C, L)``.
TOKENLESS = ("conv", "batchnorm")
#: At most this many prefix tokens are looked for (a class token, a distillation token and up to
#: eight registers).
MAX_PREFIX = 10

#: Kinds whose output keeps the layout of their input (element-wise ops; pooling keeps the
#: axes it pools), so the layout is inherited from whatever produced the input.
KEEPS_LAYOUT = ("relu", "activation", "dropout", "identity", "maxpool", "avgpool",
                "adaptive_avgpool", "adaptive_maxpool")



def map_size(shape: Sequence[int] | None, layout: str | None) -> tuple[int, int] | None:
    """``(h, w)`` of a 4-D ``shape`` read with ``layout``, or of a token sequence's grid
    (``None`` if either is unknown)."""
    if shape is None or layout is None:
        return None
    if is_tokens(layout):
        return parse_tokens(layout)[1] if len(shape) == 3 else None
    if len(shape) != 4:
        return None
    return (shape[2], shape[3]) if layout == CHANNELS_FIRST else (shape[1], shape[2])


def is_tokens(layout: str | None) -> bool:
    return isinstance(layout, str) and layout.startswith(TOKENS + ":")


def parse_tokens(layout: str) -> tuple[int, tuple[int, int]]:
    """``(prefix tokens, (h, w))`` of a ``"tokens:k:hxw"`` layout."""
    _, k, hw = layout.split(":")
    h, w = hw.split("x")
    return int(k), (int(h), int(w))


def describe(layout: str) -> str:
    """A layout in words, for messages."""
    if is_tokens(layout):
        k, (h, w) = parse_tokens(layout)
        return f"tokens ({k} prefix token{'s' if k != 1 else ''}, then a {h}x{w} grid)"
    return layout


def token_layout(shape: Sequence[int], grid: tuple[int, int] | None) -> tuple[str | None, str]:
    """The token reading of a 3-D output ``(N, T, C)``: ``"tokens:k:hxw"`` where ``T − k``
    tokens (``k < MAX_PREFIX``) form the input's ``H × W`` grid divided by one patch stride
    ``s`` (``h = ⌊H/s⌋`` or ``⌈H/s⌉``, the same ``s`` for ``w``), with the reason in words, or
    ``None`` with the reason. Refused (``None``) when no ``k`` or more than one fits, or when
    the tokens do not sit on axis 1 (``(N, T, C)``: what every vision transformer passes between
    its blocks; a 1-D convolution's ``(N, C, L)`` is not read as tokens, see :func:`own_layout`)."""
    if grid is None or len(shape) != 3:
        return None, "not a token sequence (N, T, C) of an image input"
    fits = _token_fits(int(shape[1]), grid)
    if not fits:
        return None, (f"no split of its {shape[1]} tokens into up to {MAX_PREFIX - 1} prefix tokens "
                      f"and a grid of the input's {grid[0]}x{grid[1]} pixels at one patch stride")
    if len(fits) > 1:
        shown = ", ".join(f"{k} + {h}x{w}" for k, h, w in fits)
        return None, f"its {shape[1]} tokens split onto the input's grid in more than one way ({shown})"
    k, h, w = fits[0]
    return f"{TOKENS}:{k}:{h}x{w}", f"its {shape[1]} tokens are {k} prefix + a {h}x{w} patch grid"


def _token_fits(t: int, grid: tuple[int, int]) -> list[tuple[int, int, int]]:
    H, W = grid
    fits = []
    for k in range(min(MAX_PREFIX, t)):
        n = t - k
        for h in range(1, n + 1):
            if n % h:
                continue
            w = n // h
            if h * w > 1 and any((h, w) in _sides(H, W, s) for s in _strides(H, h)):
                fits.append((k, h, w))
    return fits


def _strides(H: int, h: int) -> range:
    """Patch strides ``s`` with ``⌊H/s⌋`` or ``⌈H/s⌉`` equal to ``h``."""
    return range(max(1, H // (h + 1)), H // max(1, h - 1) + 2 if h > 1 else H + 1)


def _sides(H: int, W: int, s: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The grid of an ``H × W`` input at patch stride ``s``, rounded down or up (both sides
    alike: one convolution's geometry)."""
    return (H // s, W // s), (-(-H // s), -(-W // s))


# ---- layouts -----------------------------------------------------------------------------------
def _on_grid(h: int, w: int, grid: tuple[int, int]) -> bool:
    """Whether an ``h x w`` map is the input's ``H x W`` grid scaled by one factor: some ``s``
    with ``|h - H/s| <= 1`` and ``|w - W/s| <= 1`` (strides, paddings and rounding move each
    side by less than one cell at the map's scale)."""
    H, W = grid
    low = max((h - 1) / H, (w - 1) / W)  # bounds on 1/s from each side
    high = min((h + 1) / H, (w + 1) / W)
    return low <= high and high > 0


def plausible_layouts(shape: Sequence[int], grid: tuple[int, int] | None) -> tuple[str, ...]:
    """The readings of a 4-D ``shape`` whose map lies on the input's grid (:func:`_on_grid`):
    channels-first puts the map on axes 2, 3, channels-last on axes 1, 2. Both for a square
    input whose channel count is about the map's side; neither for shapes no scaling explains
    (or without an image ``grid``)."""
    if grid is None:
        return ()
    return tuple(lay for lay, (h, w) in ((CHANNELS_FIRST, shape[2:4]), (CHANNELS_LAST, shape[1:3]))
                 if _on_grid(int(h), int(w), grid))


def _axis_of(n: int | None, shape: Sequence[int], default: str | None) -> str | None:
    """Which channel axis a per-channel size ``n`` names in a 4-D ``shape``: axis 1
    (channels-first) or 3 (channels-last); ``default`` when it matches both."""
    if n is None:
        return None
    first, last = n == shape[1], n == shape[3]
    if first and last:
        return default
    return CHANNELS_FIRST if first else CHANNELS_LAST if last else None


def own_layout(B: Any, info: Any, shape: Sequence[int]) -> tuple[str | None, str]:
    """What a layer's kind and parameters prove about the layout of its 4-D output ``shape``.

    * linear: channels-last — it acts on the last axis, whatever the tensor's rank;
    * conv, batchnorm: the axis holding their channel count (``weight``'s first dimension, the
      running mean's length); both axes match only when channels equal the map's width, and then
      the frameworks' default layout for these kinds, channels-first, is taken;
    * layernorm: the axis it normalises;
    * a leaf of unknown kind whose per-channel parameters (one non-1 dimension, all the same
      size: LayerNorm, GroupNorm, ConvNeXt's LayerNorm2d) match exactly one of the two axes.

    Returns ``(layout or None, the evidence in words)``.
    """
    def size(t: Any) -> int | None:
        if t is None or not B.is_tensor(t):
            return None
        dims = [d for d in B.shape(t) if d != 1]
        return dims[0] if len(dims) == 1 else None

    if info.kind == "linear":
        return CHANNELS_LAST, "a linear layer acts on the last axis"
    if info.kind in ("conv", "batchnorm"):
        weight = info.params.get("weight")
        if info.kind == "conv":  # neutral layout (out, in / groups, kh, kw)
            n = B.shape(weight)[0] if B.is_tensor(weight) else None
        else:  # affine weight, else running mean: one value per channel
            n = size(weight) or size(info.params.get("running_mean"))
        lay = _axis_of(n, shape, CHANNELS_FIRST)
        return lay, (f"its {n} channels sit on axis {1 if lay == CHANNELS_FIRST else 3}"
                     if lay else "")
    if info.kind == "layernorm" and len(info.attrs.get("axes", ())) == 1:
        axis = info.attrs["axes"][0] % len(shape)
        if axis in (1, 3):
            lay = CHANNELS_FIRST if axis == 1 else CHANNELS_LAST
            return lay, (f"it normalises axis {axis} (its per-channel parameters of size "
                         f"{shape[axis]} match axis {axis})")
    if info.kind in ("other", "layernorm") and not info.has_children and info.params:
        sizes = {size(t) for t in info.params.values()}
        if len(sizes) == 1 and None not in sizes:
            n = sizes.pop()
            lay = _axis_of(n, shape, None)
            if lay is not None:
                return lay, (f"its per-channel parameters of size {n} match axis "
                             f"{1 if lay == CHANNELS_FIRST else 3}")
    return None, ""


def decide_layout(own: str | None, why: str, inherited: str | None,
                  plausible: tuple[str, ...]) -> tuple[str | None, str]:
    """The layout of a 4-D output from the evidence, or ``None`` with the reason.

    In order: the layer's own kind and parameters (:func:`own_layout`), unless the map would
    then lie off the input's grid while the other reading lies on it (a contradiction, not
    decided); else the one reading that puts the map on the input's grid
    (:func:`plausible_layouts`); else the layout inherited from the layer's input or from the
    child that produced the same tensor (``inherited``, found by the probe).
    """
    if own is not None:
        if plausible and own not in plausible:
            return None, (f"{why}, so it would be {own}, but only the {plausible[0]} reading puts "
                          f"its map on the input's grid")
        return own, why
    if len(plausible) == 1:
        return plausible[0], f"only the {plausible[0]} reading puts its map on the input's grid"
    if inherited is not None and (inherited in plausible or not plausible):
        return inherited, f"it keeps the {inherited} layout of the tensor it was computed from"
    if plausible:
        return None, ("both readings put its map on the input's grid (channels about as many as "
                      "the map is wide) and its kind and parameters do not tell them apart")
    return None, "neither reading puts its map on the input's grid"

