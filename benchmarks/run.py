"""Run every ``benchmarks/bench_*.py`` in one process and collect one table of ratios.

    python benchmarks/run.py [--quick] [--only core,lrp] [--readme]

Each bench module exposes ``main(quick: bool) -> Table``. Results go to
``benchmarks/RESULTS.md``; ``--readme`` also replaces the table between the
``<!-- BENCHMARK TABLE -->`` markers in README.md. Threads are pinned (``XPLAIN_BENCH_THREADS``,
default 2) for torch and paddle alike.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "backends")]

from common import THREADS, Table  # noqa: E402

MARK = "<!-- BENCHMARK TABLE -->"


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> Table:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats / smaller batches")
    p.add_argument("--only", default="", help="comma-separated bench names (default: all)")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or discover()
    combined = Table()
    started = time.time()
    for name in names:
        print(f"== bench_{name}", flush=True)
        module = importlib.import_module(f"bench_{name}")
        combined.rows.extend(module.main(quick=args.quick).rows)
    header = (f"CPU: {platform.processor() or platform.machine()}, {THREADS} threads, "
              f"{'quick' if args.quick else 'full'} run, {time.time() - started:.0f} s, "
              f"{time.strftime('%Y-%m-%d')}. Ratios are against a raw forward+backward of the "
              f"same model and batch, timed in the same process (median of repeats; Grad-CAM, "
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
