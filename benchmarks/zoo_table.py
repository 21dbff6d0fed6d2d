"""The zoo table: every classifier constructor of torchvision.models and paddle.vision.models ×
{LRP default composite, LRP-ε, Grad-CAM at the default layer, saliency}, each conserved / right /
refused with the reason — the README's "Model zoo" table (issue 13).

* LRP (random weights, calibrated BatchNorm, :mod:`xplain.testing.classifiers`): with biases
  zeroed, |Σ R − logit| / |logit| (ε = 1e-9, see tests/test_lrp_zoo.py); with biases kept,
  whether ``exp.conservation`` balances (default ε).
* Grad-CAM: the automatic layer, and whether xplain's map equals a reference Grad-CAM computed
  with the framework's own hooks and autodiff at that layer (tests/test_cam_zoo.py's reference).
* Saliency: whether xplain's map equals |∂logit/∂x| from the framework's own autodiff.

Usage: ``python benchmarks/zoo_table.py --framework torch [--only resnet18 ...] [--out rows.jsonl]``;
``--render rows.jsonl`` prints the markdown table. Rows are appended as they finish, so a long
sweep can be resumed (constructors already in ``--out`` are skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "tests")]

import xplain  # noqa: E402
from xplain.errors import XplainError  # noqa: E402
from xplain.testing import classifiers  # noqa: E402

#: the same closeness as tests/test_cam_zoo.py: 1e-5 of the map's largest value
MAP_ATOL = 1e-5


class _Fw:
    """The little of tests/conftest.Framework the CAM reference needs."""

    def __init__(self, name: str) -> None:
        from xplain.backends import load_backend

        self.name, self.B = name, load_backend(name)

    def tensor(self, a: np.ndarray) -> Any:
        if self.name == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        import paddle

        return paddle.to_tensor(np.ascontiguousarray(a, dtype=np.float32))

    def numpy(self, t: Any) -> np.ndarray:
        return self.B.to_numpy(t)


def _output(fw: str, name: str) -> dict:
    return {"output": 0} if fw == "paddle" and name == "googlenet" else {}


def _lrp(fw: _Fw, name: str, x: Any) -> dict:
    why = classifiers.lrp_refusal(name)
    row: dict[str, Any] = {}
    try:
        model = classifiers.build(name, fw.name, zero_biases=True)
        for composite in ("epsilon_plus_flat", "epsilon"):
            exp = xplain.explain(model, x, method="lrp", composite=composite, epsilon=1e-9,
                                 stabilizer=1e-9, **_output(fw.name, name))
            r, t = fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output)
            row[composite] = float(np.max(np.abs(r - t) / np.abs(t)))
        model = classifiers.build(name, fw.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = xplain.explain(model, x, method="lrp", **_output(fw.name, name))
        row["report"] = float(exp.conservation.error.max())
    except XplainError as exc:
        row = {"refused": f"{type(exc).__name__}: {str(exc).split(';')[0]}", "expected": why}
    return row


def _cam_and_saliency(fw: _Fw, name: str, x: Any) -> dict:
    from test_cam_zoo import reference_gradcam

    model = classifiers.build(name, fw.name)
    out = _output(fw.name, name)
    targets = [1, 2]
    row: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exp = xplain.explain(model, x, "gradcam", target=targets, relu=False, normalize=False,
                                 max_batch=2, **out)
        (layer,) = exp.layers
        _, _, ref = reference_gradcam(fw, model, layer, x, targets, out.get("output"))
        scale = float(np.abs(ref).max())
        row["gradcam"] = {"layer": layer, "right": bool(
            scale > 0 and np.abs(exp.numpy() - ref).max() <= MAP_ATOL * scale)}
    except XplainError as exc:
        row["gradcam"] = {"refused": f"{type(exc).__name__}: {str(exc).split(';')[0]}"}
    exp = xplain.explain(model, x, "saliency", target=targets, **out)
    row["saliency"] = bool(np.allclose(exp.numpy(), _autodiff_saliency(fw, model, x, targets, out),
                                       rtol=0, atol=1e-6 * float(np.abs(exp.numpy()).max())))
    return row


def _autodiff_saliency(fw: _Fw, model: Any, x: Any, targets: list[int], out: dict) -> np.ndarray:
    """|∂logit/∂x| by the framework alone, the parameters frozen as xplain freezes them (torch's
    MultiheadAttention takes another kernel when its weights want gradients: 2e-6 apart on a
    ViT), paddle's LayerNorms with the gradient of their formula (its own is wrong for weights
    other than 1, tests/test_backend_layers.py)."""
    from test_cam_zoo import _layer_norm_fixes

    if fw.name == "torch":
        import torch

        for p in model.parameters():
            p.requires_grad_(False)
        xx = x.detach().clone().requires_grad_(True)
        y = model(xx)
        y = y if not out else y[out["output"]]
        (g,) = torch.autograd.grad(sum(y[i, t] for i, t in enumerate(targets)), xx)
        return np.abs(g.numpy())
    import paddle

    for p in model.parameters():
        p.stop_gradient = True
    xx = x.detach().clone()
    xx.stop_gradient = False
    fixes = _layer_norm_fixes(fw, model)
    try:
        y = model(xx)
    finally:
        for h in fixes:
            h.remove()
    y = y if not out else y[out["output"]]
    (g,) = paddle.grad(sum(y[i, t] for i, t in enumerate(targets)), xx)
    return np.abs(g.numpy())


def sweep(framework: str, only: list[str], out: Path) -> None:
    done = set()
    if out.exists():
        done = {(r["framework"], r["name"]) for r in map(json.loads, out.read_text().splitlines())}
    fw = _Fw(framework)
    if framework == "torch":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for name in only or classifiers.names(framework):
        if (framework, name) in done:
            continue
        start = time.perf_counter()
        size = classifiers.input_size(name, framework)
        x = fw.tensor(np.random.default_rng(1).standard_normal((2, 3, size, size)))
        row = {"framework": framework, "name": name, "size": size, "lrp": _lrp(fw, name, x)}
        row.update(_cam_and_saliency(fw, name, x))
        row["seconds"] = round(time.perf_counter() - start, 1)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _lrp_cell(lrp: dict, key: str) -> str:
    if "refused" in lrp:  # the reason once, in the first LRP column
        return ("refused: " + (lrp.get("expected") or lrp["refused"])) if key != "epsilon" else "refused"
    return f"conserved ({lrp[key]:.0e})" if lrp[key] < 1e-3 else f"**off by {lrp[key]:.1e}**"


def render(paths: list[Path]) -> str:
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines()]
    lines = ["| framework | constructor | px | LRP default (zero bias) | LRP-ε (zero bias) | "
             "report with biases | Grad-CAM default layer | saliency |",
             "|---|---|---:|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["framework"], r["name"])):
        lrp = r["lrp"]
        report = ("—" if "refused" in lrp else
                  ("balanced" if lrp["report"] <= 1e-3 else f"**off {lrp['report']:.1e}**"))
        cam = r["gradcam"]
        cam_cell = (f"refused: {cam['refused']}" if "refused" in cam else
                    f"`{cam['layer']}` " + ("right" if cam["right"] else "**differs**"))
        lines.append(f"| {r['framework']} | {r['name']} | {r['size']} | "
                     f"{_lrp_cell(lrp, 'epsilon_plus_flat')} | {_lrp_cell(lrp, 'epsilon')} | "
                     f"{report} | {cam_cell} | {'right' if r['saliency'] else '**differs**'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--framework", choices=("torch", "paddle"))
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--out", type=Path, default=Path("zoo_rows.jsonl"))
    p.add_argument("--render", type=Path, nargs="*")
    args = p.parse_args()
    if args.render:
        print(render(args.render))
    else:
        sweep(args.framework, args.only, args.out)
