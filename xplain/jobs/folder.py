"""The folder job: image files in, figures, attributions, a table and a report out
(``xplain explain`` and :func:`explain_folder`)."""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as xio
from .. import viz
from ..errors import OptionError
from ..modelkit import kit_for
from ..run import progress_bar
from . import labels as labels_mod
from .outputs import SIGNED, AttributionArchive, ResultsTable, attribution_map, figure
from .report import write_report
from .targets import parse_target

JOB_FILE = "job.json"
FIGURES = "figures"
#: figure files a job can write: PNG (lossless, the default), JPEG (quality 95; encodes about 8×
#: faster, which matters on a machine whose cores the model already fills) or none (table,
#: attributions and report only)
FIGURE_FORMATS = ("png", "jpg", "none")


def image_keys(files: Sequence[Path]) -> dict[Path, str]:
    """Each image's name in the outputs: its path below the files' common folder,
    ``/``-separated, without the suffix, unless two files differ only in it (``a.png`` and
    ``a.jpg`` keep theirs)."""
    root = _common_root(files)
    rel = {f: f.resolve().relative_to(root) for f in files}
    stems: dict[str, int] = {}
    for r in rel.values():
        stems[r.with_suffix("").as_posix()] = stems.get(r.with_suffix("").as_posix(), 0) + 1
    return {f: (r.with_suffix("").as_posix() if stems[r.with_suffix("").as_posix()] == 1
                else r.as_posix()) for f, r in rel.items()}


def _common_root(files: Sequence[Path]) -> Path:
    parents = [str(f.resolve().parent) for f in files]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _batches(files: Sequence[Path], prep: xio.Preprocessing, size: int
             ) -> Iterator[tuple[list[Path], np.ndarray, list[np.ndarray]]]:
    """Decoded batches of at most ``size`` images of one shape (model input, pictures); a
    change of shape (``--preprocess none`` on mixed sizes) starts a new batch."""
    paths: list[Path] = []
    inputs: list[np.ndarray] = []
    pictures: list[np.ndarray] = []
    for f in files:
        pic = prep.picture(xio.load_image(f))
        x = xio.normalize(pic, prep.mean, prep.std)
        if inputs and x.shape != inputs[0].shape:
            yield paths, np.stack(inputs), pictures
            paths, inputs, pictures = [], [], []
        paths.append(f)
        inputs.append(x)
        pictures.append(pic)
        if len(inputs) == size:  # at once: a full batch never waits on the next file
            yield paths, np.stack(inputs), pictures
            paths, inputs, pictures = [], [], []
    if inputs:
        yield paths, np.stack(inputs), pictures


@dataclass
class Batch:
    """One explained batch on its way to the files."""

    paths: list[Path]
    pictures: list[np.ndarray]
    probs: np.ndarray
    results: list[tuple[list[int], np.ndarray, Any]]  # per target rank: targets, attributions, balance
    seconds: float  # per image and target


def _prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each computed in a worker thread while the caller works on the one before."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xplain-reader") as pool:
        future = pool.submit(next, items, None)
        while True:
            item = future.result()
            if item is None:
                return
            future = pool.submit(next, items, None)
            yield item


def batch_records(out: Path, batch: Batch, keys: Mapping[Path, str], names: Sequence[str] | None,
                  method: str, signed: bool, settings: Mapping[str, Any]
                  ) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray]]]:
    """Write one batch's figures (``settings["figures"]``); return its table rows and its
    ``(npz key, attributions)`` pairs."""
    fmt = settings["figures"]
    rows, arrays = [], []
    for targets, attr, cons in batch.results:
        for i, path in enumerate(batch.paths):
            key, cls = keys[path], targets[i]
            name = names[cls] if names else str(cls)
            fig_rel = "" if fmt == "none" else f"{FIGURES}/{key}_{cls}.{fmt}"
            if fig_rel:
                title = f"{name} (p={batch.probs[i, cls]:.3f}) - {method}"
                viz.save(out / fig_rel, figure(batch.pictures[i], attribution_map(attr[i]),
                                               title=title, method=method, signed=signed))
            arrays.append((f"{key}:{cls}", attr[i]))
            rows.append({"image": key, "target": cls, "class_name": names[cls] if names else "",
                         "probability": float(batch.probs[i, cls]), "method": method,
                         "options": json.dumps(settings["options"]), "seconds": batch.seconds,
                         "conservation": float(cons.error[i]) if cons is not None else None,
                         "figure": fig_rel, "attribution_key": f"{key}:{cls}"})
    return rows, arrays


def store_records(out: Path, rows: list[dict[str, Any]], arrays: list[tuple[str, np.ndarray]],
                  images: int, settings: Mapping[str, Any], archive: AttributionArchive,
                  table: ResultsTable, bar: Any) -> None:
    """Append a finished batch to ``attributions.npz`` and ``results.csv``, then record the
    job and advance the bar by its ``images``."""
    archive.add(arrays)
    table.add(rows)
    _record_job(out, settings)
    if bar is not None:
        bar.update(images)


def _write_batch(out: Path, batch: Batch, keys: Mapping[Path, str], names: Sequence[str] | None,
                 method: str, signed: bool, settings: Mapping[str, Any], archive: AttributionArchive,
                 table: ResultsTable, bar: Any) -> None:
    rows, arrays = batch_records(out, batch, keys, names, method, signed, settings)
    store_records(out, rows, arrays, len(batch.paths), settings, archive, table, bar)


class BatchExplainer:
    """Explains decoded batches for a job: the method's attributions for each target rank,
    the class probabilities, and the class names and target rule, fixed at the first batch
    (when the number of classes is known). Used by the local engine and by each Ray actor."""

    def __init__(self, model: Any, *, method: str, target: Any, options: Mapping[str, Any],
                 output: Any, seed: int, labels: Any, zoo: bool) -> None:
        self.model, self.kit = model, kit_for(model)
        self.method, self.target, self.options = method, target, dict(options)
        self.output, self.seed, self.labels, self.zoo = output, seed, labels, zoo
        self.top1 = _top1(target)
        self.names: list[str] | None = None
        self.spec: Any = None

    def __call__(self, paths: list[Path], x_np: np.ndarray, pictures: list[np.ndarray]) -> Batch:
        import xplain

        t0 = time.perf_counter()
        x = self.kit.to_tensor(x_np, self.model)
        results = []
        if self.top1:
            # the method resolves the top class from its own forward and reports the
            # scores it took it from (exp.scores): no separate forward for the table
            exp = xplain.explain(self.model, x, method=self.method, target=None, output=self.output,
                                 seed=self.seed, progress=False, **self.options)
            probs = _softmax(exp.extras["scores"])
            results.append((exp.targets.tolist(), exp.numpy(), exp.extras.get("conservation")))
        else:
            probs = _softmax(xplain.predict(self.model, x, output=self.output))
        if self.spec is None:
            self.names = labels_mod.class_names(self.labels, probs.shape[1], self.zoo)
            self.spec = parse_target(self.target, self.names)
        if not self.top1:
            chosen = self.spec.choose(probs)
            for rank in range(len(chosen[0])):
                targets = [c[rank] for c in chosen]
                exp = xplain.explain(self.model, x, method=self.method, target=targets,
                                     output=self.output, seed=self.seed, progress=False, **self.options)
                results.append((targets, exp.numpy(), exp.extras.get("conservation")))
        per_image = (time.perf_counter() - t0) / len(paths)
        return Batch(paths, pictures, probs, results, per_image / len(results))


def _top1(target: Any) -> bool:
    return target is None or str(target).strip().lower() == "top1"


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_job(out: Path, settings: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse to mix two jobs' results in one folder; clear it with ``overwrite``."""
    job = out / JOB_FILE
    if overwrite:
        for name in ("results.csv", "attributions.npz", "index.html", JOB_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / FIGURES, ignore_errors=True)
    elif job.is_file():
        before = json.loads(job.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise OptionError(
                f"{out} holds the results of a job with other settings ({', '.join(changed)}: "
                f"{ {k: before.get(k) for k in changed} } there); pass --overwrite "
                f"(overwrite=True) to replace them, or choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)


def _record_job(out: Path, settings: Mapping[str, Any]) -> None:
    """Write ``job.json`` once a batch is done: a job that fails before (a bad option) leaves
    nothing that would refuse the corrected command."""
    (out / JOB_FILE).write_text(json.dumps(dict(settings), indent=1), encoding="utf-8")


def explain_folder(model: Any, inputs: str | Path | Sequence[str | Path], *, method: str = "saliency",
                   out: str | Path = "xplain-out", target: str | int | None = "top1",
                   options: Mapping[str, Any] | None = None, preprocess: str | xio.Preprocessing = "imagenet",
                   labels: str | Path | Sequence[str] | None = None, zoo: bool = False,
                   batch_size: int = 16, figures: str = "png", overwrite: bool = False,
                   progress: bool | None = None, engine: str = "local", workers: int | None = None,
                   threads: int = 1, model_source: Any = None,
                   output: Any = None, seed: int = 0, model_name: str | None = None,
                   command: str | None = None) -> list[dict[str, str]]:
    """Explain every image in ``inputs`` (files, folders searched recursively, globs) and
    write ``out/``: ``figures/<image>_<class>.png`` (input | heat map with a colour bar in the
    attribution's units | overlay, titled with class name, probability and method),
    ``attributions.npz`` (key ``<image>:<class>``, one image's attributions), ``results.csv``
    (:data:`.outputs.COLUMNS`) and ``index.html``.

    Images stream through in batches of ``batch_size`` (memory does not grow with the folder).
    A re-run skips images already done; a run with other settings in the same folder is
    refused unless ``overwrite``.

    Args:
        model: a model of any installed framework (borrowed, left as found).
        method, options: the attribution method and its options, as for :func:`xplain.explain`.
        target: ``"top1"``, ``"topk:K"`` (K figures per image), a class index or a class name.
        preprocess: :func:`xplain.io.preprocessing` preset (``imagenet``, ``none``, a size).
        labels: class names (a file or a list); ``zoo=True`` with 1,000 outputs: ImageNet's.
        figures: :data:`FIGURE_FORMATS`: ``png``, ``jpg`` or ``none`` (no figure files; the
            report then lists the rows).
        output: which part of the model's output holds the scores (see :func:`xplain.explain`).
        model_name, command: shown in the report.
        engine: ``"local"`` (this process: decoding, explaining and writing overlap in three
            threads) or ``"ray"`` (Ray Data actors, see :mod:`.ray_engine`; the same files).
        workers, threads: Ray only: the number of actors (default one per GPU of the cluster,
            else one per ``threads`` CPUs) and each actor's CPU threads.
        model_source: Ray only: a :class:`~.ray_engine.ModelSource` each actor loads the model
            from (default: actors receive a pickled copy of ``model``).

    Returns:
        The rows of ``results.csv`` (this run's and earlier runs' in the same folder).
    """
    import xplain

    if batch_size < 1:
        raise OptionError(f"batch_size={batch_size} must be a positive number of images")
    if engine not in ("local", "ray"):
        raise OptionError(f"engine={engine!r} is unknown; use 'local' or 'ray'")
    if figures not in FIGURE_FORMATS:
        raise OptionError(f"figures={figures!r} is not a figure format; use one of {FIGURE_FORMATS}")
    out = Path(out)
    prep = xio.preprocessing(preprocess)
    files = [f for f in xio.find_images(inputs)
             if out.resolve() not in f.resolve().parents]  # never the job's own figures
    if not files:
        raise OptionError(f"every image named by {inputs!r} is inside the output folder {out}")
    options = dict(options or {})
    settings = {"model": model_name or type(model).__name__, "method": method,
                "options": {k: _plain(v) for k, v in sorted(options.items())},
                "target": str(target), "preprocess": prep.describe(), "output": repr(output),
                "seed": seed, "figures": figures}
    _check_job(out, settings, overwrite)
    table = ResultsTable(out / "results.csv")
    archive = AttributionArchive(out / "attributions.npz")
    keys = image_keys(files)
    done = table.images() & set(keys.values())
    table.keep(done)  # rows of unfinished images (an interrupted batch) are redone
    todo = [f for f in files if keys[f] not in done]
    kit = kit_for(model)
    bar = progress_bar(progress, total=len(todo), unit="img", desc="explaining", dynamic_ncols=True)
    job = {"method": method, "target": target, "options": options, "output": output, "seed": seed,
           "labels": labels, "zoo": zoo}
    t_start = time.perf_counter()
    try:
        if engine == "ray" and todo:
            from . import ray_engine

            for rows, blobs, images in ray_engine.run(model, model_source, todo, keys, prep,
                                                      batch_size, out, settings, job, workers,
                                                      threads):
                store_records(out, rows, blobs, images, settings, archive, table, bar)
        elif engine == "local":
            _run_local(model, todo, keys, prep, batch_size, out, settings, job, archive, table, bar)
    finally:
        if bar is not None:
            bar.close()
    versions = {"xplain": xplain.__version__, kit.name: _framework_version(kit.name),
                "numpy": np.__version__}
    write_report(out, table.rows, {**settings, "images": len(files), "skipped (done before)": len(done)},
                 command=command, versions=versions, seconds=time.perf_counter() - t_start)
    return table.rows


def _run_local(model: Any, todo: Sequence[Path], keys: Mapping[Path, str], prep: xio.Preprocessing,
               batch_size: int, out: Path, settings: Mapping[str, Any], job: Mapping[str, Any],
               archive: AttributionArchive, table: ResultsTable, bar: Any) -> None:
    """The local engine: ``todo`` explained in this process."""
    explainer = BatchExplainer(model, **job)
    signed = job["method"] in SIGNED
    # figures and files are written by one thread while the next batch is explained, and the
    # next batch is decoded by another: OpenCV and file I/O release the GIL
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xplain-writer")
    pending = None
    try:
        for paths, x_np, pictures in _prefetched(_batches(todo, prep, batch_size)):
            batch = explainer(paths, x_np, pictures)
            if pending is not None:  # one batch in flight: memory stays flat
                pending.result()  # and its errors surface here
            pending = writer.submit(_write_batch, out, batch, keys, explainer.names, job["method"],
                                    signed, settings, archive, table, bar)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)


def _plain(value: Any) -> Any:
    """``value`` as it goes into ``job.json`` and the table: itself where JSON holds it."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def _framework_version(name: str) -> str:
    from importlib import metadata

    for dist in ({"torch": "torch", "paddle": "paddlepaddle"}.get(name, name), name):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"
