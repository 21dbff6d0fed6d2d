"""``xplain explain`` end to end through a subprocess, on the backend under test: a zoo model
with weights written in the test, a folder of generated images, every output file checked by
content against in-process computations (``xplain.predict``, ``xplain.explain``)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import xplain
from xplain import io as xio
from xplain.jobs.labels import imagenet_classes
from xplain.modelkit import kit, load_model, load_weights

ZOO = {"torch": "torchvision", "paddle": "paddle"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "xplain.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def make_images(folder: Path) -> list[str]:
    """Five RGB images of two sizes, plus a grayscale, an RGBA and a 16-bit one in a subfolder."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        h, w = (70, 90) if i % 2 else (96, 80)
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "sub" / "gray.png"), rng.integers(0, 256, (72, 72), dtype=np.uint8))
    cv2.imwrite(str(folder / "sub" / "rgba.png"), rng.integers(0, 256, (72, 72, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "sub" / "deep.png"), rng.integers(0, 65536, (72, 72, 3), dtype=np.uint16))
    return ["img0", "img1", "img2", "img3", "img4", "sub/deep", "sub/gray", "sub/rgba"]


@pytest.fixture
def job(fw, tmp_path):
    """A resnet18 of the backend's zoo with its weights in a file, and the images."""
    k = kit(fw.name)
    model = k.build_zoo("resnet18")
    state = {n: np.asarray(v.numpy()) for n, v in model.state_dict().items()}
    if fw.name == "torch":
        from safetensors.numpy import save_file

        weights = tmp_path / "r18.safetensors"
        save_file(state, str(weights))
    else:
        weights = tmp_path / "r18.pdparams"
        fw.module.save({"module." + n: v for n, v in model.state_dict().items()}, str(weights))
    keys = make_images(tmp_path / "photos")
    return model, weights, keys


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def batch_of(files: list[Path], preset: str) -> tuple[np.ndarray, list[np.ndarray]]:
    prep = xio.preprocessing(preset)
    pics = [prep.picture(xio.load_image(f)) for f in files]
    return np.stack([xio.normalize(p, prep.mean, prep.std) for p in pics]), pics


def test_explain_folder_writes_what_the_library_computes(fw, job, tmp_path):
    model, weights, keys = job
    out = tmp_path / "out"
    r = run_cli("explain", "photos", "--model", f"{ZOO[fw.name]}:resnet18", "--weights", weights.name,
                "--method", "input_x_gradient", "--preprocess", "64", "--batch-size", "3",
                "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_rows(out / "results.csv")
    assert [row["image"] for row in rows] == keys  # sorted folder walk, one row per image
    files = [tmp_path / "photos" / f"{k}.png" for k in keys]
    x_np, pics = batch_of(files, "64")
    x = kit(fw.name).to_tensor(x_np, model)
    probs = np.exp(xplain.predict(model, x).astype(np.float64))
    probs /= probs.sum(1, keepdims=True)
    top = probs.argmax(1)
    names = imagenet_classes()
    want = xplain.explain(model, x, method="input_x_gradient", target=top).numpy()
    archive = np.load(out / "attributions.npz")
    for i, row in enumerate(rows):
        assert int(row["target"]) == top[i]
        assert row["class_name"] == names[top[i]]
        # float32 logits through a different batch split: 1e-5 relative
        np.testing.assert_allclose(float(row["probability"]), probs[i, top[i]], rtol=1e-4)
        assert row["method"] == "input_x_gradient" and row["conservation"] == ""
        got = archive[row["attribution_key"]]
        # same weights, same inputs; batches of 3 vs 8 change float32 summation order only
        np.testing.assert_allclose(got, want[i], rtol=1e-4, atol=1e-5 * np.abs(want[i]).max())
        fig = cv2.cvtColor(cv2.imread(str(out / row["figure"])), cv2.COLOR_BGR2RGB)
        # the input panel: 64 px scaled to the 224 px cell (nearest neighbour: scale ≥ 2),
        # below the figure title (26 px) and the panel title (22 px), 4 px in
        panel = fig[26 + 22:26 + 22 + 224, 4:4 + 224]
        np.testing.assert_array_equal(panel, cv2.resize(pics[i], (224, 224),
                                                        interpolation=cv2.INTER_NEAREST))
    page = (out / "index.html").read_text(encoding="utf-8")
    for row in rows:
        assert f"src='{row['figure']}'" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network

    # a re-run skips everything; a deleted figure is redone, alone
    stamps = {row["figure"]: (out / row["figure"]).stat().st_mtime_ns for row in rows}
    (out / rows[2]["figure"]).unlink()
    r = run_cli("explain", "photos", "--model", f"{ZOO[fw.name]}:resnet18", "--weights", weights.name,
                "--method", "input_x_gradient", "--preprocess", "64", "--batch-size", "3",
                "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = read_rows(out / "results.csv")
    assert sorted(row["image"] for row in again) == sorted(keys)
    for row in rows:
        if row["figure"] != rows[2]["figure"]:
            assert (out / row["figure"]).stat().st_mtime_ns == stamps[row["figure"]]
    assert (out / rows[2]["figure"]).is_file()
    assert len(np.load(out / "attributions.npz").files) >= len(keys)

    # other settings in the same folder: refused, then replaced with --overwrite
    r = run_cli("explain", "photos", "--model", f"{ZOO[fw.name]}:resnet18", "--weights", weights.name,
                "--method", "saliency", "--preprocess", "64", "--out", "out", cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "method" in r.stderr
    r = run_cli("explain", "photos/img0.png", "--model", f"{ZOO[fw.name]}:resnet18", "--weights",
                weights.name, "--method", "saliency", "--preprocess", "64", "--out", "out",
                "--overwrite", "--target", "topk:2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_rows(out / "results.csv")
    assert [row["target"] for row in rows] == [str(t) for t in np.argsort(-probs[0])[:2]]
    assert sorted(np.load(out / "attributions.npz").files) == sorted(r["attribution_key"] for r in rows)


def test_lrp_rows_carry_the_conservation_report(fw, job, tmp_path):
    model, weights, keys = job
    r = run_cli("explain", "photos/sub", "--model", f"{ZOO[fw.name]}:resnet18", "--weights",
                weights.name, "--method", "lrp", "--set", "composite=epsilon", "--preprocess", "64",
                "--target", "281", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [row["target"] for row in rows] == ["281"] * 3 and rows[0]["class_name"] == "tabby"
    x_np, _ = batch_of([tmp_path / "photos" / "sub" / f"{n}.png" for n in ("deep", "gray", "rgba")], "64")
    exp = xplain.explain(model, kit(fw.name).to_tensor(x_np, model), method="lrp",
                         composite="epsilon", target=281)
    for i, row in enumerate(rows):
        err = float(row["conservation"])
        assert err <= 1e-3  # the report's own tolerance
        # the same batch, the same balance: float32 noise only
        assert abs(err - exp.conservation.error[i]) <= 1e-5


def test_user_factory_and_bad_arguments(fw, job, tmp_path):
    model, weights, keys = job
    (tmp_path / "mynets.py").write_text(textwrap.dedent(f"""
        from xplain.modelkit import kit

        def build():
            return kit({fw.name!r}).build_zoo("resnet18")
        """))
    if fw.name == "torch":  # a DataParallel checkpoint in PyTorch's own format
        weights = tmp_path / "r18.pth"
        fw.module.save({"module." + n: v for n, v in model.state_dict().items()}, str(weights))
    r = run_cli("explain", "photos/img0.png", "--model", "mynets:build", "--weights", weights.name,
                "--preprocess", "64", "--out", "mine", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = read_rows(tmp_path / "mine" / "results.csv")[0]
    assert row["class_name"] == ""  # a user model has no bundled names: indices only
    bad = {
        ("--model", "resnet18"): "torchvision:NAME",
        ("--model", f"{ZOO[fw.name]}:no_such_net"): "has no classifier 'no_such_net'",
        ("--model", "no_module_here:build"): "cannot import 'no_module_here'",
        ("--weights", "missing.safetensors"): "no weights file",
        ("--set", "composite"): "NAME=VALUE",
        ("--set", "no_such_option=1"): "no option(s) ['no_such_option']",
        ("--target", "no such class"): "not a class name",
        ("--preprocess", "big"): "imagenet, imagenet:SIZE, none",
    }
    for (flag, value), message in bad.items():
        args = {"--model": f"{ZOO[fw.name]}:resnet18", "--weights": weights.name, "--set": "steps=2",
                "--target": "top1", "--preprocess": "64"}
        args[flag] = value
        flat = [a for kv in args.items() for a in kv]
        r = run_cli("explain", "photos/img0.png", "--method", "integrated_gradients", *flat,
                    "--out", "bad", cwd=tmp_path)
        assert r.returncode == 2, (flag, value, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (flag, value, r.stderr)


def test_weights_of_another_architecture_list_the_names(fw, job, tmp_path):
    model, weights, keys = job
    other = kit(fw.name).build_zoo("resnet34")
    with pytest.raises(xplain.CheckpointError, match=r"missing .*layer1\.2") as info:
        load_weights(other, weights)
    assert str(weights) in str(info.value)


def test_pretrained_download_offline_says_what_to_pass(fw, monkeypatch):
    if fw.name == "torch":
        import torch.hub

        def offline(*a, **k):
            raise OSError("network unreachable")

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
        hint = "--weights resnet18.pth"
    else:
        import paddle.vision.models.resnet as resnet

        def offline(*a, **k):
            raise OSError("network unreachable")

        # resnet imported the downloader into its own namespace
        monkeypatch.setattr(resnet, "get_weights_path_from_url", offline)
        hint = "--weights resnet18.pdparams"
    with pytest.raises(xplain.CheckpointError, match="offline") as info:
        load_model(f"{ZOO[fw.name]}:resnet18", "DEFAULT")
    assert hint in str(info.value)


def test_methods_help_and_version(fw, tmp_path):
    r = run_cli("methods", "lrp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "composite  (default 'auto')" in r.stdout
    assert "epsilon_gamma_box" in r.stdout  # the composites are listed
    r = run_cli("--version", cwd=tmp_path)
    assert r.stdout.strip() == f"xplain {xplain.__version__}"


def test_an_unreadable_image_stops_the_job_after_the_batches_before_it(fw, tmp_path):
    """Decoding runs one batch ahead in a thread and writing one batch behind in another: an
    error in either reaches the caller, and what was finished before stays and is skipped."""
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "imgs" / f"a{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    model = kit(fw.name).build_zoo("resnet18")
    with pytest.raises(xplain.InputError, match="bad.png"):
        xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "out", preprocess="64",
                              batch_size=2, progress=False)
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [r["image"] for r in rows] == ["a0", "a1", "a2", "a3"]
    (tmp_path / "imgs" / "bad.png").unlink()
    stamp = (tmp_path / "out" / rows[0]["figure"]).stat().st_mtime_ns
    again = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "out", preprocess="64",
                                  batch_size=2, progress=False)
    assert len(again) == 4 and (tmp_path / "out" / rows[0]["figure"]).stat().st_mtime_ns == stamp


def test_figure_formats_write_the_same_results(fw, tmp_path):
    """``figures="jpg"`` writes JPEG figures of the PNG ones' pixels (up to JPEG's loss) and
    ``"none"`` no figures; the attributions and the table do not depend on the format, and a
    finished ``none`` job is skipped on re-run although it has no figure files."""
    rng = np.random.default_rng(2)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"a{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    model = kit(fw.name).build_zoo("resnet18")
    runs = {}
    for fmt in ("png", "jpg", "none"):
        rows = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / fmt, preprocess="64",
                                     batch_size=2, figures=fmt, progress=False)
        runs[fmt] = (rows, np.load(tmp_path / fmt / "attributions.npz"))
    png_rows, png_npz = runs["png"]
    for rows, npz in runs.values():
        assert [(r["image"], r["target"], r["probability"]) for r in rows] == \
            [(r["image"], r["target"], r["probability"]) for r in png_rows]
        for key in png_npz.files:
            np.testing.assert_array_equal(npz[key], png_npz[key])
    for r_png, r_jpg in zip(png_rows, runs["jpg"][0]):
        assert r_jpg["figure"].endswith(".jpg")
        png = cv2.imread(str(tmp_path / "png" / r_png["figure"]))
        jpg = cv2.imread(str(tmp_path / "jpg" / r_jpg["figure"]))
        # the same encoder on the PNG's pixels: the JPEG holds the same figure
        again = cv2.imdecode(cv2.imencode(".jpg", png, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(jpg, again)
    assert all(r["figure"] == "" for r in runs["none"][0])
    assert not (tmp_path / "none" / "figures").exists()
    assert "<img" not in (tmp_path / "none" / "index.html").read_text(encoding="utf-8")
    stamp = (tmp_path / "none" / "attributions.npz").stat().st_mtime_ns
    again = xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "none", preprocess="64",
                                  batch_size=2, figures="none", progress=False)
    assert len(again) == 3 and (tmp_path / "none" / "attributions.npz").stat().st_mtime_ns == stamp
    with pytest.raises(xplain.OptionError, match="figure format"):
        xplain.explain_folder(model, tmp_path / "imgs", out=tmp_path / "x", figures="gif")
