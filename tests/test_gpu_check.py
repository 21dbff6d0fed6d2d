"""``benchmarks/gpu_check.py``'s equality pass, dry-run on the CPU against itself: every
registered method runs through it on the backend under test and compares exactly (the script
itself is for a machine with a GPU; this keeps it working between such machines)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_run_on_cpu_checks_every_method(fw):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    import xplain

    rows = gpu_check.equality(fw.name, "cpu", size=64, batch=1)  # layer4 is 2x2 at 64 px
    assert [r[0] for r in rows] == xplain.methods()  # attention rollout on the tiny ViT
    for method, diff, _bound, ok in rows:
        assert ok and diff == 0.0, method  # the same device twice: bit-identical
