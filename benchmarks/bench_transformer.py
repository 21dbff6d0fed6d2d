"""Vision transformers: LRP (attn_lrp, cp_lrp) against a raw forward+backward, attention rollout
against one forward, and LXT in a process of its own.

The bars (ViT-B/16 and Swin-T, batch 8, 224², CPU): LRP ≤ 1.4× a raw forward+backward and
faster than LXT; rollout ≤ 1.1× one forward. torch runs torchvision's ``vit_b_16`` and
``swin_t``; paddle the test zoo's ViT-B/16 and Swin-T (``xplain_paddle.transformers``),
random weights. LXT
(``--lxt-python``, a Python with LXT 2.1) runs ``lxt_vit.py`` in a subprocess: LXT patches
torch's classes for the whole process, so its ratio is to a raw baseline timed in that
process (``XPLAIN_BENCH_LXT_PYTHON`` names it for ``benchmarks/run.py``). ``--quick`` uses
batch 2 and fewer repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "backends")]

import xplain  # noqa: E402
from common import (Table, forward_only, interleaved_rounds, make_input, raw_forward_backward,  # noqa: E402
                    round_spread, set_threads, THREADS)


def vit(framework: str):
    """ViT-B/16 with random weights (seeded), the head drawn too (torchvision zeroes it)."""
    if framework == "torch":
        import torch
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.vit_b_16(weights=None).eval()
        with torch.no_grad():
            model.heads.head.weight.normal_(0, 0.05)
        return model
    import paddle
    from xplain_paddle.transformers import VisionTransformer

    paddle.seed(0)
    model = VisionTransformer()
    model.eval()
    return model


def _swin(table: Table, framework: str, batch: int, repeats: int) -> None:
    """LRP on Swin-T (window attention re-evaluated, see xplain.methods._attention):
    torchvision's, or the paddle test zoo's."""
    if framework == "torch":
        import torch
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.swin_t(weights=None).eval()
    else:
        import paddle
        from xplain_paddle.transformers import SwinTransformer

        paddle.seed(0)
        model = SwinTransformer()
        model.eval()
    x = make_input(framework, batch, 224)
    cases = {"raw": raw_forward_backward(framework, model, x),
             "lrp attn_lrp": lambda: xplain.explain(model, x, method="lrp", composite="attn_lrp", target=0),
             "lrp cp_lrp": lambda: xplain.explain(model, x, method="lrp", composite="cp_lrp", target=0)}
    rounds = interleaved_rounds(cases, repeats)
    t = {k: statistics.median(v) for k, v in rounds.items()}
    table.add("raw forward+backward", framework, "swin_t", t["raw"], t["raw"], f"batch {batch}, 224²")
    for case in ("lrp attn_lrp", "lrp cp_lrp"):
        table.add(f"xplain {case}", framework, "swin_t", t[case], t["raw"], round_spread(rounds, case))


def main(quick: bool = False, frameworks: tuple[str, ...] = ("torch", "paddle"),
         repeats: int | None = None, lxt_python: str | None = None) -> Table:
    table = Table()
    lxt_python = lxt_python or os.environ.get("XPLAIN_BENCH_LXT_PYTHON")  # as benchmarks/run.py runs it
    batch, default_repeats = (2, 3) if quick else (8, 3)
    repeats = repeats or default_repeats
    for fw in frameworks:
        set_threads(fw)
        _swin(table, fw, batch, repeats)
        model = vit(fw)
        x = make_input(fw, batch, 224)
        raw = raw_forward_backward(fw, model, x)
        fwd = forward_only(fw, model, x)
        cases = {
            "raw": raw,
            "forward": fwd,
            "lrp attn_lrp": lambda m=model, xx=x: xplain.explain(m, xx, method="lrp", composite="attn_lrp",
                                                                 target=0),
            "lrp cp_lrp": lambda m=model, xx=x: xplain.explain(m, xx, method="lrp", composite="cp_lrp", target=0),
            "attention_rollout": lambda m=model, xx=x: xplain.explain(m, xx, method="attention_rollout"),
            "gradient_attention_rollout": lambda m=model, xx=x: xplain.explain(
                m, xx, method="gradient_attention_rollout", target=0),
        }
        rounds = interleaved_rounds(cases, repeats)
        t = {k: statistics.median(v) for k, v in rounds.items()}
        base = t["raw"]
        table.add("raw forward+backward", fw, "vit_b_16", base, base, f"batch {batch}, 224²")
        table.add("one forward (no grad)", fw, "vit_b_16", t["forward"], base)
        for case in ("lrp attn_lrp", "lrp cp_lrp", "gradient_attention_rollout"):
            table.add(f"xplain {case}", fw, "vit_b_16", t[case], base, round_spread(rounds, case))
        table.add("xplain attention_rollout", fw, "vit_b_16", t["attention_rollout"], base,
                  f"{t['attention_rollout'] / t['forward']:.2f}× one forward; "
                  + round_spread(rounds, "attention_rollout", "forward").replace("rounds", "rounds vs forward"))
        if fw == "torch" and lxt_python:
            out = subprocess.run([lxt_python, str(Path(__file__).with_name("lxt_vit.py")), "--batch", str(batch),
                                  "--repeats", str(repeats), "--threads", str(THREADS)],
                                 capture_output=True, text=True, check=True)
            peer = json.loads(out.stdout.strip().splitlines()[-1])
            for name, mine in (("lxt attnlrp", "lrp attn_lrp"), ("lxt cp", "lrp cp_lrp")):
                r = peer[name]
                theirs = r["seconds"] / r["raw"]
                table.add(f"{name} (+ Zennit ε on conv/linear)", fw, "vit_b_16", r["seconds"], r["raw"],
                          f"own process, raw {r['raw'] * 1000:.0f} ms; xplain {mine} is "
                          f"{(t[mine] / base) / theirs:.2f}× its ratio")
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--framework", action="append", choices=("torch", "paddle"))
    p.add_argument("--repeats", type=int)
    p.add_argument("--lxt-python", help="a Python with lxt==2.1 (and transformers<5) installed")
    a = p.parse_args()
    print(main(a.quick, tuple(a.framework or ("torch", "paddle")), a.repeats, a.lxt_python).markdown())
