"""The ``xplain`` command line.

    xplain explain IMAGES... --model SPEC [--weights FILE] --method M [--set k=v ...] --out DIR
                   [--engine ray]                                       a folder job: figures,
                                                                        npz, csv, index.html
    xplain demo [--framework torch|paddle] [--method lrp] [--out DIR]   first explanation, PNGs
    xplain methods [NAME]                                               registered methods, or
                                                                        one method's options
    xplain backends                                                     usable backends
    xplain summary --model resnet18 [--input 1,3,224,224]               layer table
    xplain --version
"""
from __future__ import annotations

import argparse
import ast
import inspect
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from .errors import OptionError, XplainError


def parse_setting(text: str) -> tuple[str, Any]:
    """``--set name=value``: the value read as a Python literal (``2``, ``-2.12``, ``None``,
    ``3,16,16`` → a tuple, ``True``), else kept as text (``epsilon_gamma_box``)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise OptionError(f"--set {text!r}: write NAME=VALUE, e.g. --set composite=epsilon or "
                          f"--set steps=32")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return name, value


def _output_selector(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _cmd_explain(args: argparse.Namespace) -> int:
    from .jobs import explain_folder
    from .jobs.ray_engine import ModelSource
    from .modelkit import kit_for, load_model

    options = dict(parse_setting(s) for s in args.set or [])
    if args.layer is not None:
        options["layer"] = args.layer
    ray = args.engine == "ray"
    if ray and args.device:
        raise OptionError("--device does not apply to --engine ray: each Ray worker takes a GPU "
                          "where the cluster has them; drop --device")
    model, zoo = load_model(args.model, args.weights)
    if args.threads and not ray:  # on Ray: each worker's threads
        kit_for(model).set_threads(args.threads)
    if args.device:
        model = kit_for(model).move(model, args.device)
    if args.weights is None and zoo:
        print(f"xplain: note: {args.model} has random weights (no --weights given); pass a "
              f"weights file or --weights DEFAULT for the pretrained ones", file=sys.stderr)
    preprocess = args.preprocess or "imagenet"
    rows = explain_folder(model, args.inputs, method=args.method, out=args.out, target=args.target,
                          options=options, preprocess=preprocess, labels=args.labels, zoo=zoo,
                          batch_size=args.batch_size, figures=args.figures, overwrite=args.overwrite,
                          engine=args.engine, workers=args.workers, threads=args.threads or 1,
                          model_source=ModelSource(args.model, args.weights) if ray else None,
                          output=_output_selector(args.output), seed=args.seed,
                          model_name=args.model, command=shlex.join(["xplain", *sys.argv[1:]]))
    print(f"{len(rows)} results in {args.out}/results.csv; report: {args.out}/index.html")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(framework=args.framework, method=args.method, out=args.out, n=args.images,
             seed=args.seed)
    return 0


def _method_help(name: str) -> int:
    from .plugins import registry

    reg = registry()
    if name not in reg.methods:
        raise OptionError(f"no method {name!r}; registered: {', '.join(sorted(reg.methods))}")
    e = reg.methods[name]
    print(f"{name}: {e.description}" + ("" if e.plugin == "builtin_methods" else f"  [{e.plugin}]"))
    params = list(inspect.signature(e.fn).parameters.values())[1:]
    shown = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if shown:
        print("\noptions (xplain explain --set NAME=VALUE; xplain.explain(..., NAME=VALUE)):")
        for p in shown:
            default = "required" if p.default is inspect.Parameter.empty else f"default {p.default!r}"
            print(f"  {p.name}  ({default})")
    if name == "lrp":
        print("\ncomposites (--set composite=NAME): " + ", ".join(sorted(reg.composites)))
    doc = inspect.getdoc(e.fn)
    if doc:
        print("\n" + doc)
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .plugins import registry, unavailable_note

    if args.name:
        return _method_help(args.name)
    reg = registry()
    if not reg.methods:  # an empty listing is an answer, not an error: exit 0 and say why
        print(f"no attribution methods are registered: "
              f"{unavailable_note() or 'no installed plugin registers any'}")
        return 0
    width = max(len(n) for n in reg.methods)
    for name in sorted(reg.methods):
        e = reg.methods[name]
        origin = "" if e.plugin == "builtin_methods" else f"  [{e.plugin}]"
        print(f"{name.ljust(width)}  {e.description}{origin}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from .backends import load_backend
    from .errors import BackendError
    from .plugins import registry, unavailable_note

    names = sorted(registry().backends)
    if not names:
        print(f"no backends are registered: "
              f"{unavailable_note() or 'no installed plugin registers any'}")
    for name in names:
        try:
            load_backend(name)
            status = "ok"
        except BackendError as exc:
            status = f"unavailable ({exc})"
        print(f"{name}: {status}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .demo import build_model, default_framework
    from .summary import summary
    from .testing.zoo import SMALL_MODELS, VISION_MODELS, build

    framework = args.framework or default_framework()
    default = "1,3,64,64" if args.model == "demo" else "1,3,224,224"
    try:
        shape = tuple(int(s) for s in (args.input or default).split(","))
    except ValueError:
        raise XplainError(f"--input {args.input!r} is not a shape; write e.g. 1,3,224,224") from None
    if args.model == "demo":
        model = build_model(framework)
    elif args.model in VISION_MODELS + SMALL_MODELS:
        model = build(args.model, framework)  # architecture only: random weights, no download
    else:
        raise XplainError(f"unknown model {args.model!r}; choose one of "
                          f"{', '.join(('demo',) + VISION_MODELS + SMALL_MODELS)}")
    print(f"{args.model} ({framework})")
    print(summary(model, shape))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .modelkit import installed

    p = argparse.ArgumentParser(prog="xplain", description="Explain image classifiers "
                                "(LRP, CAM, gradients, perturbation) in PyTorch and Paddle.")
    p.add_argument("--version", action="version", version=f"xplain {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain image files with a model: figures, npz, csv, "
                       "index.html", description="Explain image files, folders (recursive) or "
                       "globs with a zoo model or your own; writes figures/, attributions.npz, "
                       "results.csv and index.html to --out. Re-running skips images done.")
    e.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    e.add_argument("--model", required=True, help="torchvision:NAME, paddle:NAME (the zoos) or "
                   "package.module:factory (a function of yours that returns a model)")
    e.add_argument("--weights", default=None, help="a .safetensors, .pth/.pt (torch, read with "
                   "weights_only=True), .pdparams or .npz file; DEFAULT: the zoo's pretrained "
                   "download")
    e.add_argument("--method", default="saliency", help="see `xplain methods` (default saliency)")
    e.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a method option, repeatable (see `xplain methods METHOD`)")
    e.add_argument("--layer", default=None, help="CAM layer (the same as --set layer=NAME)")
    e.add_argument("--target", default="top1", help="top1 (default), topk:K, a class index or a "
                   "class name")
    e.add_argument("--labels", default=None, help="class names: a JSON list or one per line "
                   "(zoo models with 1,000 classes: ImageNet's, bundled)")
    e.add_argument("--preprocess", default=None, help="imagenet (default: resize 256, crop 224, "
                   "ImageNet mean/std), imagenet:SIZE, none, or a size in px")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--figures", choices=("png", "jpg", "none"), default="png",
                   help="figure files: png (default), jpg (faster to encode) or none")
    e.add_argument("--out", default="xplain-out", help="output folder (default xplain-out)")
    e.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    e.add_argument("--output", default=None, help="which output holds the class scores, for "
                   "models returning a tuple/dict: an index or a key")
    e.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) "
                   "or ray: Ray Data workers, each loading the model once (pip install 'xplain[ray]'"
                   "; RAY_ADDRESS names a cluster, else Ray starts on this machine)")
    e.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU "
                   "of the cluster, else one per --threads CPUs)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads for the framework "
                   "(with --engine ray: per worker, default 1)")
    e.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, gpu:0 ...")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=_cmd_explain)
    d = sub.add_parser("demo", help="explain the bundled shapes CNN and write PNGs")
    d.add_argument("--framework", choices=installed(), default=None,
                   help="default: torch if installed, else paddle")
    d.add_argument("--method", default=None, help="default: lrp (else input_x_gradient)")
    d.add_argument("--out", default="xplain-demo", help="folder for the PNG files")
    d.add_argument("--images", type=int, default=4, help="how many images to explain")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_cmd_demo)
    m = sub.add_parser("methods", help="list attribution methods, or one method's options")
    m.add_argument("name", nargs="?", default=None, help="a method: its options, defaults and docs")
    m.set_defaults(fn=_cmd_methods)
    sub.add_parser("backends", help="list framework backends").set_defaults(fn=_cmd_backends)
    s = sub.add_parser("summary", help="layer table: shapes, parameters, mult-adds")
    s.add_argument("--model", default="resnet18", help="zoo architecture name or 'demo'")
    s.add_argument("--framework", choices=installed(), default=None)
    s.add_argument("--input", default=None,
                   help="input shape, comma separated (default 1,3,224,224; 1,3,64,64 for demo)")
    s.set_defaults(fn=_cmd_summary)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xplain`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except XplainError as exc:
        print(f"xplain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
