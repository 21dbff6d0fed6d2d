"""Folder throughput: ``xplain.explain_folder`` (what ``xplain explain`` runs) against a bare
batched loop of ``xplain.explain`` over the same files, decoding and pre-processing included in
both, and against Captum / pytorch-grad-cam loops when installed; optionally the job's peak RSS
at two folder sizes (each in a fresh process).

    python benchmarks/bench_folder.py [--framework torch] [--images 512] [--methods saliency gradcam lrp]
    python benchmarks/bench_folder.py --rss 128 2048
    python benchmarks/bench_folder.py --ray 1 2 --methods gradcam --images 256

The job also draws and writes a figure per image, appends to ``attributions.npz`` and
``results.csv`` and writes ``index.html``; the bare loop only computes. Images: smooth
synthetic 256 × 256 pictures (``xplain.demo.draw_shape``), pre-processed ``imagenet`` (resize
256, crop 224), resnet18 with deterministic random weights, batch 16.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import THREADS  # noqa: E402

import xplain  # noqa: E402
from xplain import io as xio  # noqa: E402
from xplain.modelkit import kit  # noqa: E402
from xplain.testing.zoo import build  # noqa: E402

OPTIONS = {"gradcam": {"layer": "layer4"}, "lrp": {"composite": "epsilon"}}
BATCH = 16


def make_folder(folder: Path, n: int) -> list[Path]:
    from xplain.demo import draw_shape

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:05d}.png"
        if not p.exists():
            cv2.imwrite(str(p), draw_shape(rng, i % 4, 256)[..., ::-1])
        paths.append(p)
    return paths


def bare_loop(model: Any, paths: list[Path], method: str, framework: str) -> None:
    k = kit(framework)
    prep = xio.preprocessing("imagenet")
    for s in range(0, len(paths), BATCH):
        x = np.stack([prep(xio.load_image(p)) for p in paths[s:s + BATCH]])
        xplain.explain(model, k.to_tensor(x, model), method=method, progress=False,
                       **OPTIONS.get(method, {}))


def peer_loop(model: Any, paths: list[Path], method: str) -> Any:
    """Captum's Saliency / pytorch-grad-cam's GradCAM over the same batches, or None."""
    import torch

    prep = xio.preprocessing("imagenet")
    if method == "saliency":
        try:
            from captum.attr import Saliency
        except ImportError:
            return None
        sal = Saliency(model)

        def explain(x: Any) -> None:
            sal.attribute(x, target=model(x).argmax(1))
    elif method == "gradcam":
        try:
            from pytorch_grad_cam import GradCAM
        except ImportError:
            return None
        cam = GradCAM(model=model, target_layers=[model.layer4])

        def explain(x: Any) -> None:
            cam(input_tensor=x, targets=None)
    else:
        return None

    def run() -> None:
        for s in range(0, len(paths), BATCH):
            explain(torch.from_numpy(np.stack([prep(xio.load_image(p)) for p in paths[s:s + BATCH]])))
    return run


def throughput(args: argparse.Namespace) -> None:
    k = kit(args.framework)
    k.set_threads(THREADS)
    model = build("resnet18", args.framework)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="xplain-bench-folder-"))
    paths = make_folder(root / f"images{args.images}", args.images)
    print(f"{args.framework}, resnet18, {args.images} images 256² → 224², batch {BATCH}, "
          f"{THREADS} threads\n")
    formats = args.figures
    print(f"{args.rounds} interleaved rounds; each cell the median over rounds of img/s and of "
          f"the job / bare ratio within a round\n")
    print("| method | bare loop (img/s) | " + " | ".join(
        f"job, {f} figures (img/s) | job / bare" for f in formats) + " | peer loop (img/s) |")
    print("|---|---:|" + "---:|---:|" * len(formats) + "---:|")
    for method in args.methods:
        bare_loop(model, paths[:BATCH], method, args.framework)  # warm-up
        rates: dict[str, list[float]] = {"bare": [], **{f: [] for f in formats}}
        ratios: dict[str, list[float]] = {f: [] for f in formats}
        for _ in range(args.rounds):  # bare and job alternate: the machine's drift hits both
            t = time.perf_counter()
            bare_loop(model, paths, method, args.framework)
            rates["bare"].append(args.images / (time.perf_counter() - t))
            for fmt in formats:
                t = time.perf_counter()
                xplain.explain_folder(model, root / f"images{args.images}", method=method,
                                      out=root / f"out_{method}", options=OPTIONS.get(method),
                                      batch_size=BATCH, figures=fmt, overwrite=True, progress=False)
                rates[fmt].append(args.images / (time.perf_counter() - t))
                ratios[fmt].append(rates[fmt][-1] / rates["bare"][-1])
        cells = [f"{np.median(rates[f]):.1f} | {np.median(ratios[f]):.2f} "
                 f"({min(ratios[f]):.2f}–{max(ratios[f]):.2f})" for f in formats]
        peer = peer_loop(model, paths, method) if args.framework == "torch" else None
        peer_rate = ""
        if peer is not None:
            t = time.perf_counter()
            peer()
            peer_rate = f"{args.images / (time.perf_counter() - t):.1f}"
        print(f"| {method} | {np.median(rates['bare']):.1f} | " + " | ".join(cells)
              + f" | {peer_rate} |", flush=True)


def rss(args: argparse.Namespace) -> None:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="xplain-bench-folder-"))
    print(f"peak RSS of `xplain explain` (saliency, {args.framework} resnet18, batch {BATCH}), "
          f"a fresh process per folder size\n")
    print("| images | peak RSS (MB) |\n|---:|---:|")
    for n in args.rss:
        make_folder(root / f"rss{n}", n)
        code = (f"import resource, xplain; from xplain.modelkit import kit; "
                f"from xplain.testing.zoo import build; kit({args.framework!r}).set_threads({THREADS}); "
                f"xplain.explain_folder(build('resnet18', {args.framework!r}), {str(root / f'rss{n}')!r}, "
                f"method='saliency', out={str(root / f'rss_out{n}')!r}, batch_size={BATCH}, "
                f"overwrite=True, progress=False); "
                f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(f"| {n} | {int(out.stdout.split()[-1]) / 1024:.0f} |", flush=True)


def ray_overhead(args: argparse.Namespace) -> None:
    """The Ray engine against the local one on this machine: the same job (``--methods``' first,
    png figures) at 1 and 2 workers, each worker with ``THREADS // workers`` threads. Ray's own
    start (``ray.init``) is timed apart; each job's time includes starting its actors and
    loading the model in them."""
    import ray

    k = kit(args.framework)
    k.set_threads(THREADS)
    model = build("resnet18", args.framework)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="xplain-bench-folder-"))
    make_folder(root / f"images{args.images}", args.images)
    method = args.methods[0]
    t = time.perf_counter()
    ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t
    print(f"{args.framework}, resnet18, {method}, {args.images} images, batch {BATCH}, "
          f"{THREADS} CPUs; ray.init took {started:.1f} s\n")
    print("| engine | workers × threads | img/s | vs local |\n|---|---|---:|---:|")
    kw = dict(method=method, options=OPTIONS.get(method), batch_size=BATCH, overwrite=True,
              progress=False)
    rates = {}
    for name, extra in [("local", {})] + [(f"ray {w}", {"engine": "ray", "workers": w,
                                                         "threads": max(1, THREADS // w)})
                                          for w in args.ray]:
        t = time.perf_counter()
        xplain.explain_folder(model, root / f"images{args.images}", out=root / "out_ray", **kw, **extra)
        rates[name] = args.images / (time.perf_counter() - t)
        shape = "1 × " + str(THREADS) if name == "local" else f"{extra['workers']} × {extra['threads']}"
        print(f"| {name.split()[0]} | {shape} | {rates[name]:.1f} | {rates[name] / rates['local']:.2f} |",
              flush=True)
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", default="torch")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam", "lrp"])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per method")
    p.add_argument("--figures", nargs="+", default=["png", "jpg"], help="figure formats to time")
    p.add_argument("--rss", type=int, nargs="*", default=None, help="folder sizes for peak RSS")
    p.add_argument("--ray", type=int, nargs="*", default=None, help="Ray worker counts to time")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if args.ray:
        ray_overhead(args)
    elif args.rss:
        rss(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
