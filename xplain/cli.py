"""The ``xplain`` command line.

    xplain demo [--framework torch|paddle] [--method lrp] [--out DIR]   first explanation, PNGs
    xplain methods                                                      registered methods
    xplain backends                                                     usable backends
    xplain summary --model resnet18 [--input 1,3,224,224]               layer table
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import XplainError


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(framework=args.framework, method=args.method, out=args.out, n=args.images,
             seed=args.seed)
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .plugins import registry, unavailable_note

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
    p = argparse.ArgumentParser(prog="xplain", description="Explain image classifiers "
                                "(LRP, CAM, gradients, perturbation) in PyTorch and Paddle.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="explain the bundled shapes CNN and write PNGs")
    d.add_argument("--framework", choices=("torch", "paddle"), default=None,
                   help="default: torch if installed, else paddle")
    d.add_argument("--method", default=None, help="default: lrp (else input_x_gradient)")
    d.add_argument("--out", default="xplain-demo", help="folder for the PNG files")
    d.add_argument("--images", type=int, default=4, help="how many images to explain")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_cmd_demo)
    sub.add_parser("methods", help="list attribution methods").set_defaults(fn=_cmd_methods)
    sub.add_parser("backends", help="list framework backends").set_defaults(fn=_cmd_backends)
    s = sub.add_parser("summary", help="layer table: shapes, parameters, mult-adds")
    s.add_argument("--model", default="resnet18", help="zoo architecture name or 'demo'")
    s.add_argument("--framework", choices=("torch", "paddle"), default=None)
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
