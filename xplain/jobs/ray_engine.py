"""The folder job on Ray Data (``engine="ray"``; the optional extra ``xplain[ray]``).

The driver splits the images still to do into the job's batches and streams them through a
pool of actors. Each actor loads the model once (from a :class:`ModelSource`, or from the
pickled model it is handed), takes a GPU where the cluster has them, decodes its batches,
explains them with the same :class:`~.folder.BatchExplainer` as the local engine and writes
their figures; it returns the table rows and the attributions already encoded as ``.npy``
bytes. The driver appends those to ``results.csv`` and ``attributions.npz`` in the batches'
order, so a Ray run writes the same files as a local one. Figures are written by the actors:
on a cluster of several machines ``out`` must be a folder they all see.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, OptionError
from .. import io as xio
from .outputs import encode_npy


@dataclass(frozen=True)
class ModelSource:
    """A model named by a spec (``torchvision:resnet50``, ``package.module:factory``) and a
    weights file (or ``"DEFAULT"``): what each Ray actor loads once, instead of receiving a
    pickled copy of the driver's model. ``root`` (default: the working directory where the
    source is made) is where a relative weights path and the user's own modules are found —
    a worker runs in a folder of Ray's choosing."""

    spec: str
    weights: str | None = None
    root: str = field(default_factory=lambda: str(Path.cwd()))

    def load(self) -> tuple[Any, bool]:
        """The model in eval mode and whether it is a zoo model (see
        :func:`xplain.modelkit.load_model`)."""
        from ..modelkit import load_model

        if self.root not in sys.path:
            sys.path.insert(0, self.root)
        weights = self.weights
        if weights not in (None, "DEFAULT"):
            weights = str(Path(self.root, weights))  # an absolute path stays as it is
        return load_model(self.spec, weights)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendError(f"engine='ray' needs Ray Data ({e}); install it with "
                           f"pip install 'xplain[ray]', or use engine='local'") from e
    return ray


class ExplainActor:
    """One Ray worker: the model loaded once, then one job batch per call."""

    def __init__(self, payload: list[Any], out: str, prep: xio.Preprocessing,
                 settings: Mapping[str, Any], job: Mapping[str, Any], threads: int) -> None:
        import ray

        from ..modelkit import kit_for
        from .folder import BatchExplainer
        from .outputs import SIGNED

        source = payload[0]
        if isinstance(source, ModelSource):
            model = source.load()[0]
        else:
            from ray import cloudpickle

            model = cloudpickle.loads(ray.get(source))
        kit = kit_for(model)
        kit.set_threads(threads)
        model = kit.move(model, "gpu:0" if ray.get_gpu_ids() else "cpu")  # Ray sets the visible GPU
        self.out, self.prep, self.settings = Path(out), prep, settings
        self.method, self.signed = job["method"], job["method"] in SIGNED
        self.explainer = BatchExplainer(model, **job)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .folder import _batches, batch_records

        rows, blobs, order = [], [], []
        for chunk, paths_json, keys_json in zip(batch["chunk"], batch["paths"], batch["keys"]):
            paths = [Path(p) for p in json.loads(paths_json)]
            keys = dict(zip(paths, json.loads(keys_json)))
            for ps, x_np, pictures in _batches(paths, self.prep, len(paths)):
                done = self.explainer(ps, x_np, pictures)
                r, arrays = batch_records(self.out, done, keys, self.explainer.names, self.method,
                                          self.signed, self.settings)
                rows += r
                blobs += [encode_npy(a) for _, a in arrays]
                order += [int(chunk)] * len(r)
        return {"chunk": np.array(order, dtype=np.int64),
                "row": np.array([json.dumps(r) for r in rows], dtype=object),
                "npy": np.array(blobs, dtype=object)}


def pack_model(model: Any) -> bytes:
    """``model`` pickled for the workers: cloudpickle (classes defined in a script or notebook
    travel by value), with the framework's own rules for its objects
    (:meth:`~xplain.modelkit.ModelKit.transport_reducer`)."""
    import io

    from ray import cloudpickle

    from ..modelkit import kit_for

    reducer = kit_for(model).transport_reducer

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            done = reducer(obj)
            return super().reducer_override(obj) if done is NotImplemented else done

    buf = io.BytesIO()
    Pickler(buf, protocol=5).dump(model)
    return buf.getvalue()


def _chunks(todo: Sequence[Path], keys: Mapping[Path, str], size: int) -> list[dict[str, Any]]:
    # absolute paths: a worker runs in a folder of Ray's choosing
    return [{"chunk": i // size, "paths": json.dumps([str(p.resolve()) for p in todo[i:i + size]]),
             "keys": json.dumps([keys[p] for p in todo[i:i + size]])}
            for i in range(0, len(todo), size)]


def run(model: Any, source: ModelSource | None, todo: Sequence[Path], keys: Mapping[Path, str],
        prep: xio.Preprocessing, batch_size: int, out: Path, settings: Mapping[str, Any],
        job: Mapping[str, Any], workers: int | None, threads: int
        ) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, bytes]], int]]:
    """Explain ``todo`` on Ray; yield each finished batch's rows, ``(npz key, npy bytes)``
    pairs and image count, in the batches' order.

    ``workers`` actors (default: one per GPU of the cluster, else one per ``threads`` CPUs),
    each using ``threads`` CPU threads. Ray is started on this machine unless it already runs
    or ``RAY_ADDRESS`` names a cluster."""
    if workers is not None and workers < 1:
        raise OptionError(f"workers={workers} must be a positive number of Ray actors")
    if threads < 1:
        raise OptionError(f"threads={threads} must be a positive number of CPU threads per worker")
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    n = workers or (gpus or max(1, int(resources.get("CPU", 1)) // threads))
    try:
        payload = [source if source is not None else ray.put(pack_model(model))]
    except Exception as e:  # a model whose framework objects do not pickle
        raise OptionError(f"the model cannot be sent to Ray workers ({type(e).__name__}: {e}); "
                          f"pass model_source=ModelSource(spec, weights) (the command line's "
                          f"--model/--weights) so that each worker builds its own") from e
    items = _chunks(todo, keys, batch_size)
    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # the table in the local engine's order
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(ExplainActor, batch_size=1, batch_format="numpy",
                            # two batches at once per actor, as the local engine's threads do:
                            # one decodes or writes figures while the other is explained
                            # (xplain.explain is safe from two threads on one model)
                            compute=ray.data.ActorPoolStrategy(
                                size=n, max_concurrent_calls_per_actor=2,
                                enable_true_multi_threading=True),
                            num_cpus=threads, num_gpus=1 if gpus else 0,
                            fn_constructor_kwargs={"payload": payload, "out": str(out.resolve()),
                                                   "prep": prep,
                                                   "settings": dict(settings), "job": dict(job),
                                                   "threads": threads})
        rows: list[dict[str, Any]] = []
        blobs: list[tuple[str, bytes]] = []
        current = None
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for chunk, row, npy in zip(block["chunk"], block["row"], block["npy"]):
                if current is not None and chunk != current:
                    yield rows, blobs, len({r["image"] for r in rows})
                    rows, blobs = [], []
                current = chunk
                r = json.loads(row)
                rows.append(r)
                blobs.append((r["attribution_key"], bytes(npy)))
        if rows:
            yield rows, blobs, len({r["image"] for r in rows})
    finally:
        ctx.execution_options.preserve_order = keep_order
