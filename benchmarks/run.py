"""Run every ``benchmarks/bench_*.py`` and collect one table of ratios.

    python benchmarks/run.py [--quick] [--only core,lrp] [--readme]

Each bench module exposes ``main(quick: bool) -> Table`` (and, if it covers both frameworks,
a ``frameworks`` parameter). Each module, and each framework (and, for modules with a
``models`` parameter, each model) of such a module, runs in a fresh worker process: a case and
its raw baseline (and the peer libraries it is compared with) share a process, but no bench
inherits the allocator state another left behind. In one process the
paddle LRP ratios read up to 0.09 higher after the torch and Zennit runs than alone, and a user
runs one framework per process. Results go to ``benchmarks/RESULTS.md``; ``--readme`` also
replaces the table between the ``<!-- BENCHMARK TABLE -->`` markers in README.md. Threads are
pinned (``XPLAIN_BENCH_THREADS``, default 2) for torch and paddle alike.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "backends")]

from common import THREADS, Table  # noqa: E402

MARK = "<!-- BENCHMARK TABLE -->"


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _worker(name: str, framework: str | None, model: str | None, quick: bool, out: str) -> None:
    """Run one bench module (one framework, one model of it) and write its rows to ``out`` as
    JSON."""
    module = importlib.import_module(f"bench_{name}")
    kwargs: dict = {"frameworks": (framework,)} if framework else {}
    if model:
        kwargs["models"] = (model,)
    rows = module.main(quick=quick, **kwargs).rows
    Path(out).write_text(json.dumps(rows))


def _jobs(name: str) -> list[tuple[str | None, str | None]]:
    """The (framework, model) pairs to run ``bench_<name>`` for, one process each (``None``:
    the module does not split by it)."""
    params = inspect.signature(importlib.import_module(f"bench_{name}").main).parameters
    frameworks = list(params["frameworks"].default) if "frameworks" in params else [None]
    models = list(params["models"].default) if "models" in params else [None]
    return [(f, m) for f in frameworks for m in models]


def main(argv: list[str] | None = None) -> Table:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats / smaller batches")
    p.add_argument("--only", default="", help="comma-separated bench names (default: all)")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one bench in this process
    p.add_argument("--framework", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.framework, args.model, args.quick, args.out)
        return Table()
    names = [n for n in args.only.split(",") if n] or discover()
    combined = Table()
    started = time.time()
    for name in names:
        for framework, model in _jobs(name):
            print(f"== bench_{name}" + "".join(f" ({v})" for v in (framework, model) if v), flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "rows.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", str(out)]
                cmd += (["--framework", framework] if framework else []) + (["--model", model] if model else [])
                cmd += ["--quick"] if args.quick else []
                subprocess.run(cmd, check=True)
                combined.rows.extend(tuple(row) for row in json.loads(out.read_text()))
    header = (f"CPU: {platform.processor() or platform.machine()}, {THREADS} threads, "
              f"{'quick' if args.quick else 'full'} run, {time.time() - started:.0f} s, "
              f"{time.strftime('%Y-%m-%d')}. Ratios are against a raw forward+backward of the "
              f"same model and batch, timed in the same process (a fresh process per bench, "
              f"framework and, for LRP, model; median of repeats; Grad-CAM, "
              f"Score-/Ablation-CAM, saliency and LRP cases interleaved round-robin with their "
              f"baseline; Zennit's LRP rows in their own round-robin with their own baseline).")
    text = header + "\n\n" + combined.markdown() + "\n"
    (HERE / "RESULTS.md").write_text("# Benchmark results\n\n" + text)
    if args.readme:
        readme = ROOT / "README.md"
        content = readme.read_text()
        if content.count(MARK) >= 2:
            before, _, rest = content.partition(MARK)
            _, _, after = rest.partition(MARK)
            readme.write_text(before + MARK + "\n" + text + MARK + after)
        else:
            print(f"README.md has no pair of {MARK} markers; table not inserted", file=sys.stderr)
    print(text)
    return combined


if __name__ == "__main__":
    main()
