"""CAM family benchmark: Grad-CAM against Captum / pytorch-grad-cam, Score-CAM and Ablation-CAM
against the one-forward-per-channel limit.

Issue bars: Grad-CAM ≤ 1.1× Captum's LayerGradCam on resnet50 and vgg16 (and faster than
pytorch-grad-cam); Score-CAM within 1.1× of "one full forward per channel" (512 × a batch-1
forward on resnet18), lower when constant channels are deduplicated; Ablation-CAM runs only the
part of the network after the layer.

Timings of the cases compared with each other are *interleaved* (one round of every case, then
the next round; medians), so load from other processes hits them alike. ``quick`` uses batch 2,
fewer repeats and 112² for Score-/Ablation-CAM.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "backends")]

import xplain  # noqa: E402
from common import Table, forward_only, interleaved, make_input, raw_forward_backward, set_threads  # noqa: E402,E501
from xplain.testing.zoo import build  # noqa: E402


def gradcam_rows(table: Table, fw: str, name: str, batch: int, repeats: int) -> None:
    model = build(name, fw)
    x = make_input(fw, batch, 224)
    layer = "layer4" if name.startswith("resnet") else "features.30"
    targets = list(range(batch))
    cases: dict[str, Callable[[], Any]] = {
        "raw": raw_forward_backward(fw, model, x),
        "xplain": lambda: xplain.explain(model, x, "gradcam", target=targets, layer=layer),
    }
    note = f"batch {batch}, 224², layer {layer}"
    if fw == "torch":
        module = dict(model.named_modules())[layer]
        try:
            from captum.attr import LayerGradCam

            lgc = LayerGradCam(model, module)
            cases["captum"] = lambda: lgc.attribute(x, target=targets)
        except ImportError:
            pass
        try:
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            pgc = GradCAM(model=model, target_layers=[module])
            tg = [ClassifierOutputTarget(t) for t in targets]
            cases["pytorch-grad-cam"] = lambda: pgc(input_tensor=x, targets=tg)
        except ImportError:
            pass
    t = interleaved(cases, repeats)
    base = t["raw"]
    table.add("raw forward+backward", fw, name, base, base, note)
    extra = ""
    if "captum" in t:
        extra = f"{t['xplain'] / t['captum']:.2f}× Captum"
        if "pytorch-grad-cam" in t:
            extra += f", {t['xplain'] / t['pytorch-grad-cam']:.2f}× pytorch-grad-cam"
    table.add("xplain gradcam", fw, name, t["xplain"], base, extra)
    if "captum" in t:
        table.add("captum LayerGradCam", fw, name, t["captum"], base, "layer resolution, no upsampling")
    if "pytorch-grad-cam" in t:
        table.add("pytorch-grad-cam GradCAM", fw, name, t["pytorch-grad-cam"], base)


def forward_cam_rows(table: Table, fw: str, size: int, repeats: int, peers: bool) -> None:
    """Score-CAM and Ablation-CAM on resnet18 layer4 (512 channels), batch 1."""
    model = build("resnet18", fw)
    x = make_input(fw, 1, size)
    fwd1 = forward_only(fw, model, x)
    x64 = make_input(fw, 64, size)
    fwd64 = forward_only(fw, model, x64)
    note = f"resnet18 layer4, batch 1, {size}²"
    info: dict[str, Any] = {}

    def score() -> None:
        info["score"] = xplain.explain(model, x, "scorecam", target=0, layer="layer4", batch_size=64)

    def ablation() -> None:
        info["ablation"] = xplain.explain(model, x, "ablationcam", target=0, layer="layer4",
                                          batch_size=64)

    cases: dict[str, Callable[[], Any]] = {"fwd1": fwd1, "fwd64": fwd64, "score": score,
                                           "ablation": ablation}
    if peers and fw == "torch":
        try:
            from pytorch_grad_cam import AblationCAM, ScoreCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            sc = ScoreCAM(model=model, target_layers=[model.layer4])
            sc.batch_size = 64
            ac = AblationCAM(model=model, target_layers=[model.layer4], batch_size=64)
            tg = [ClassifierOutputTarget(0)]
            cases["pgc score"] = lambda: sc(input_tensor=x, targets=tg)
            cases["pgc ablation"] = lambda: ac(input_tensor=x, targets=tg)
        except ImportError:
            pass
    fwd1_t = interleaved({"fwd1": fwd1}, 10, warmup=2)["fwd1"]  # cheap: measure it well
    del cases["fwd1"]
    fwd64()  # warm the large-batch path once
    t = interleaved(cases, repeats, warmup=0)
    limit1 = 512 * fwd1_t
    limit64 = 8 * t["fwd64"]
    table.add("limit: 512 × batch-1 forward", fw, "resnet18", limit1, limit1, note)
    table.add("512 forwards as 8 × batch 64", fw, "resnet18", limit64, limit1, "no masking")
    s = info["score"]
    skipped = int(s.skipped_channels["layer4"][0])
    table.add("xplain scorecam", fw, "resnet18", t["score"], limit1,
              f"{t['score'] / limit64:.2f}× batched forwards; {s.forwards['layer4']} masked "
              f"forwards, {skipped} constant channels shared one")
    if "pgc score" in t:
        table.add("pytorch-grad-cam ScoreCAM", fw, "resnet18", t["pgc score"], limit1,
                  f"xplain {t['score'] / t['pgc score']:.2f}× of it")
    a = info["ablation"]
    table.add("xplain ablationcam", fw, "resnet18", t["ablation"], limit1,
              f"mode {a.ablation_mode['layer4']}")
    if "pgc ablation" in t:
        table.add("pytorch-grad-cam AblationCAM", fw, "resnet18", t["pgc ablation"], limit1,
                  f"xplain {t['ablation'] / t['pgc ablation']:.3f}× of it")


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle")) -> Table:
    table = Table()
    batch, repeats, size = (2, 2, 112) if quick else (8, 5, 224)
    for fw in frameworks:
        set_threads(fw)
        gradcam_rows(table, fw, "resnet50", batch, repeats)
        gradcam_rows(table, fw, "vgg16", batch, repeats)
        forward_cam_rows(table, fw, size, 1, peers=True)
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--frameworks", default="torch,paddle")
    args = p.parse_args()
    print(main(args.quick, tuple(args.frameworks.split(","))).markdown())
