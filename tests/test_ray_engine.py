"""The folder job on Ray Data (tox env ``ray``: ``XPLAIN_RAY=1``, once per backend): a local
Ray instance with 2 CPUs, 2 workers, the same files as the local engine."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import xplain
from xplain.jobs.ray_engine import ModelSource
from xplain.modelkit import kit

pytestmark = pytest.mark.ray
ZOO = {"torch": "torchvision", "paddle": "paddle"}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        size = (56, 64) if i % 3 else (64, 56)
        cv2.imwrite(str(folder / f"im{i:02d}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_same_job(local: Path, remote: Path) -> None:
    """The two engines' folders hold the same rows, attributions and figures. The workers run
    one CPU thread where the local run used more: float32 sums in another order, so values
    agree to float32 rounding and figure pixels to one colour level at map boundaries."""
    a, b = read_rows(local / "results.csv"), read_rows(remote / "results.csv")
    fixed = ("image", "target", "class_name", "method", "options", "figure", "attribution_key")
    assert [[r[c] for c in fixed] for r in a] == [[r[c] for c in fixed] for r in b]
    np.testing.assert_allclose([float(r["probability"]) for r in a],
                               [float(r["probability"]) for r in b], rtol=1e-4)
    na, nb = np.load(local / "attributions.npz"), np.load(remote / "attributions.npz")
    assert sorted(na.files) == sorted(nb.files) == sorted(r["attribution_key"] for r in a)
    for key in na.files:
        scale = np.abs(na[key]).max()
        np.testing.assert_allclose(nb[key], na[key], rtol=1e-4, atol=1e-5 * scale)
    for r in a:
        fa = cv2.imread(str(local / r["figure"])).astype(int)
        fb = cv2.imread(str(remote / r["figure"])).astype(int)
        assert fa.shape == fb.shape
        assert np.abs(fa - fb).max() <= 2 and (fa != fb).mean() < 1e-3
    assert (remote / "index.html").is_file()


def test_cli_on_ray_writes_the_local_engines_files(fw, ray_cluster, tmp_path):
    model = kit(fw.name).build_zoo("resnet18")
    state = {n: np.asarray(v.numpy()) for n, v in model.state_dict().items()}
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    make_images(tmp_path / "imgs", 7)
    # the user's own module and a relative weights path: both found from the command's folder,
    # although each worker runs in a folder of Ray's choosing
    (tmp_path / "mynets.py").write_text(
        "from xplain.modelkit import kit\n\n\n"
        f"def build_net():\n    return kit({fw.name!r}).build_zoo('resnet18')\n", encoding="utf-8")
    common = ["explain", "imgs", "--model", "mynets:build_net", "--weights", "w.safetensors",
              "--method", "gradcam", "--layer", "layer4", "--preprocess", "64", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    for out, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        r = subprocess.run([sys.executable, "-m", "xplain.cli", *common, "--out", out, *extra],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    assert_same_job(tmp_path / "local", tmp_path / "ray")


def test_python_call_ships_the_model_and_resumes(fw, ray_cluster, tmp_path):
    """``engine="ray"`` with a model object (pickled to the workers), two targets per image;
    a re-run finds everything done and leaves the files as they were; the model is left
    bit-identical."""
    model = kit(fw.name).build_zoo("resnet18")
    before = {n: np.array(v.numpy()) for n, v in model.state_dict().items()}
    make_images(tmp_path / "imgs", 5)
    kwargs = dict(method="saliency", target="topk:2", preprocess="64", batch_size=2, progress=False)
    local = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "local", **kwargs)
    remote = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "ray", engine="ray",
                                   workers=2, **kwargs)
    assert len(local) == len(remote) == 10
    assert_same_job(tmp_path / "local", tmp_path / "ray")
    stamp = (tmp_path / "ray" / "attributions.npz").stat().st_mtime_ns
    again = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "ray", engine="ray", **kwargs)
    assert again == remote and (tmp_path / "ray" / "attributions.npz").stat().st_mtime_ns == stamp
    for n, v in model.state_dict().items():
        np.testing.assert_array_equal(np.array(v.numpy()), before[n])
    with pytest.raises(xplain.OptionError, match="workers"):
        xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "bad", engine="ray",
                              workers=0, **kwargs)


def test_model_source_loads_the_weights_file(fw, tmp_path):
    """What each worker runs to get its model: the spec and the file, as the CLI reads them."""
    model = kit(fw.name).build_zoo("resnet18")
    from safetensors.numpy import save_file

    state = {n: np.asarray(v.numpy()) for n, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded, zoo = ModelSource(f"{ZOO[fw.name]}:resnet18", str(tmp_path / "w.safetensors")).load()
    assert zoo
    for n, v in loaded.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v.numpy()), state[n])


def test_a_packed_model_arrives_with_its_parameters(fw):
    """What a worker unpickles is the same model: parameters of the same type (paddle's plain
    pickling would turn them into tensors without ``trainable``), values, flags and logits."""
    from ray import cloudpickle

    from xplain.jobs.ray_engine import pack_model

    model = kit(fw.name).build_zoo("resnet18")
    params = list(model.parameters())
    if fw.name == "paddle":  # a frozen layer travels frozen
        params[0].stop_gradient = True
    else:
        params[0].requires_grad_(False)
    copy = cloudpickle.loads(pack_model(model))
    for a, b in zip(params, copy.parameters(), strict=True):
        assert type(a) is type(b)
        np.testing.assert_array_equal(np.asarray(b.numpy() if fw.name == "paddle" else b.detach().numpy()),
                                      np.asarray(a.numpy() if fw.name == "paddle" else a.detach().numpy()))
        if fw.name == "paddle":
            assert (a.trainable, a.stop_gradient) == (b.trainable, b.stop_gradient)
        else:
            assert a.requires_grad == b.requires_grad
    x = kit(fw.name).to_tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    np.testing.assert_array_equal(xplain.predict(copy, x), xplain.predict(model, x))
