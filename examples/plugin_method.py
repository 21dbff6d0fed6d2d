"""A third-party method plugin, and how it is compared with built-in methods.

xplain's built-in methods register through the same pluggy hooks any package can implement:

1. the ``xplain-sanity`` pack (``plugins/xplain_sanity``, installed with
   ``pip install plugins/xplain_sanity``) declares an entry point in the group ``xplain`` and
   adds ``random_baseline`` and ``sobel_edges``; xplain finds it on first use. From a source
   checkout where it is not installed, this script registers it at run time instead.
2. a plugin can also be an object registered at run time — below, :class:`CenterPrior` adds a
   ``center_prior`` method (a Gaussian centre bias, another model-independent baseline).

Then every method is scored with the deletion metric on the bundled demo model (deleted
pixels take the image's mean colour, close to the background of these images): real
explanations should remove the class evidence faster (lower AUC) than the baselines.

    python examples/plugin_method.py --framework torch --out out/
    XPLAIN_DISABLE_PLUGINS=sanity python examples/plugin_method.py   # the pack is blocked
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import xplain  # noqa: E402
from xplain import demo, metrics, plugins, viz  # noqa: E402


class CenterPrior:
    """A plugin object: one hook implementation registering one method (public API only)."""

    @staticmethod
    def center_prior(run: xplain.Run, *, sigma: float = 0.25):
        """A Gaussian bump at the image centre (width ``sigma`` × image size) for every class:
        the "photographers centre their subject" baseline of saliency benchmarks."""
        n, c, h, w = run.backend.shape(run.inputs)
        yy, xx = np.mgrid[0:h, 0:w]
        g = np.exp(-(((yy - (h - 1) / 2) / (sigma * h)) ** 2 + ((xx - (w - 1) / 2) / (sigma * w)) ** 2) / 2)
        run.resolve_targets()
        return run.backend.asarray(np.broadcast_to(g, (n, c, h, w)).astype(np.float32), like=run.inputs)

    @xplain.hookimpl
    def xplain_register_methods(self, registry) -> None:
        registry.add_method("center_prior", self.center_prior)


def ensure_sanity_pack() -> bool:
    """Make the ``xplain-sanity`` methods available; False when blocked by the user."""
    if "sobel_edges" in xplain.methods():
        return True  # installed: found through its entry point
    if "sanity" in plugins.blocked_names():
        return False
    try:
        import xplain_sanity.plugin as pack
    except ImportError:  # source checkout: use the pack next to this script
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "xplain_sanity"))
        import xplain_sanity.plugin as pack
    if pack not in plugins.plugin_manager().get_plugins():
        plugins.register(pack, name="sanity")
    return True


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="plugin methods vs built-ins, by deletion AUC")
    _common.add_common_args(p)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--baseline", default="mean", help="value of deleted pixels: 'mean' (each "
                   "image's mean colour, i.e. background here), 'blur', or a number")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.baseline not in ("mean", "blur"):
        args.baseline = float(args.baseline)

    have_pack = ensure_sanity_pack()
    prior = CenterPrior()
    if "center_prior" not in xplain.methods():
        plugins.register(prior, name="center_prior")
    try:
        model = demo.build_model(args.framework)
        images, labels = demo.draw_shapes(np.random.default_rng(args.seed), args.images)
        x = _common.to_tensor(demo.to_input(images), args.framework)
        methods = [demo.pick_method(), "saliency", "center_prior"]
        methods += ["sobel_edges", "random_baseline"] if have_pack else []
        aucs, maps = {}, []
        for method in methods:
            exp = xplain.explain(model, x, method=method, seed=args.seed)
            res = metrics.deletion(model, x, exp, target=exp.targets, steps=args.steps,
                                   baseline=args.baseline)
            aucs[method] = res.auc
            maps.append(viz.Panel(viz.heatmap(exp, sign="absolute")[0], method))
            print(f"{method:18s} deletion AUC {res.mean_auc:.4f}  (lower is better)")
        path = viz.save(out / "plugin_methods.png",
                        viz.figure([viz.Panel(images[0], "image"), *maps], cell=128))
        print(f"wrote {path}")
        return {"aucs": aucs, "methods": methods, "file": str(path), "inputs": x, "model": model}
    finally:
        if prior in plugins.plugin_manager().get_plugins():
            plugins.unregister(prior)


if __name__ == "__main__":
    main()
