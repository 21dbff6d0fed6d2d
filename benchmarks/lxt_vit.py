"""LXT's AttnLRP and CP-LRP on torchvision's ViT-B/16, timed against a raw forward+backward in
the same process; prints one JSON line. Run by ``bench_transformer.py --lxt-python PY`` with a
Python that has LXT 2.1 installed (``pip install lxt==2.1 "transformers<5"``: LXT's efficient
module imports transformers 4 at import time). A process of its own because LXT's
``monkey_patch`` replaces the ``forward`` of torch's own classes for every model in the
process, with no way to undo it.

The LXT variants, written from LXT's public API: ``monkey_patch`` of torchvision's ViT module
(GELU by the identity rule, LayerNorm with σ detached, MultiheadAttention with query and key
detached: CP-LRP); AttnLRP instead wraps MultiheadAttention with LXT's ``divide_gradient`` on
query and key (4) and value (2), as LXT's transformer patches do. Conv and Linear layers get
Zennit's ε through ``monkey_patch_zennit`` (what xplain's composites give them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch
import torchvision


def main(batch: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.05)  # torchvision initialises the head to zero
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, 224, 224)

    def raw() -> None:
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg)

    from torchvision.models import vision_transformer as tv
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
    from lxt.efficient.rules import divide_gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon

    originals = {cls: cls.forward for cls in (tv.nn.GELU, tv.nn.LayerNorm, tv.nn.MultiheadAttention)}

    def attnlrp_forward(self, q, k, v, *args, **kwargs):
        return self.original_forward(divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2),
                                     *args, **kwargs)

    def lxt_case(attn: bool):
        for cls, fwd in originals.items():  # LXT's patches replace forward on the classes
            cls.forward = fwd
        if attn:
            monkey_patch(tv, {
                tv.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
                tv.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                tv.nn.MultiheadAttention: partial(patch_method, attnlrp_forward, keep_original=True)})
        else:
            monkey_patch(tv)  # LXT's own map for torchvision's ViT: CP-LRP
        monkey_patch_zennit()
        comp = LayerMapComposite([(torch.nn.Conv2d, Epsilon(1e-6)), (torch.nn.Linear, Epsilon(1e-6))])

        def run() -> None:
            xg = x.detach().requires_grad_(True)
            comp.register(model)
            try:
                out = model(xg)
                (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
            finally:
                comp.remove()
            _ = xg * g  # LXT's relevance
        return run

    times = {}
    for name, make in (("lxt attnlrp", lambda: lxt_case(True)), ("lxt cp", lambda: lxt_case(False))):
        case = make()
        for _ in range(1):
            raw()
            case()
        rounds = {"raw": [], name: []}
        for _ in range(repeats):
            for k, fn in (("raw", raw), (name, case)):
                t0 = time.perf_counter()
                fn()
                rounds[k].append(time.perf_counter() - t0)
        times[name] = {"seconds": statistics.median(rounds[name]), "raw": statistics.median(rounds["raw"])}
    return times


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(main(a.batch, a.repeats, a.threads)))
