"""The example scripts (one per user story), run in-process on tiny settings on the backend
under test, with their numbers checked against independent computations."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import xplain
from xplain import io, viz

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` as a module (the examples folder is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_data_parallel(fw, model, path: Path) -> Path:
    """Save ``model``'s state dict with every key prefixed ``module.`` (as DataParallel does)."""
    state = io.add_prefix(model.state_dict(), "module.")
    if fw.name == "torch":
        fw.module.save(state, str(path))
    else:
        fw.module.save(state, str(path))
    return path


def logits(fw, model, x):
    with fw.B.no_grad():
        return fw.numpy(fw.B.forward(model, x))


def rel_close(a, b, tol):
    """max |a − b| ≤ tol · max |b|."""
    assert np.abs(a - b).max() <= tol * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


def test_story1_lrp_tutorial_cnn(fw, tmp_path):
    ex = load("lrp_tutorial_cnn")
    # a DataParallel checkpoint of other weights than the default: loading must take effect
    ckpt = save_data_parallel(fw, fw.model("tutorial_cnn", seed=7), tmp_path / "net.ckpt")
    r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--weights", str(ckpt),
                 "--composite", "zero"])
    assert r["relevance"].shape == (2, 3, 32, 32)
    np.testing.assert_allclose(logits(fw, r["model"], r["inputs"]),
                               logits(fw, fw.model("tutorial_cnn", seed=7), r["inputs"]), rtol=1e-5)
    # LRP-0 on a ReLU network is input x gradient (docs/architecture.md §3)
    ixg = xplain.explain(r["model"], r["inputs"], method="input_x_gradient", target=5).numpy()
    rel_close(r["relevance"], ixg, 1e-4)
    maps = r["maps"]
    assert maps.shape == (2, 32, 32) and maps.min() == 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps, viz.heatmap(r["relevance"], sign="positive", clip_percentile=1.0))
    # 1 % clipping: about 1 % of the positive pixels saturate
    pos = (r["relevance"].sum(1) > 0).sum(axis=(1, 2))
    sat = (maps == 1.0).sum(axis=(1, 2))
    assert np.all(sat <= np.ceil(0.01 * pos) + 1) and np.all(sat >= 1)
    png = io.load_image(r["files"][0])
    assert png.shape[0] == 22 + 192 + 4


def test_story2_cam_densenet_from_data_parallel_checkpoint(fw, tmp_path):
    ex = load("cam_densenet")
    trained = fw.model("densenet121", seed=3, num_classes=2)
    ckpt = save_data_parallel(fw, trained, tmp_path / "finetuned.ckpt")
    r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--weights", str(ckpt),
                 "--size", "64"])
    np.testing.assert_allclose(logits(fw, r["model"], r["inputs"]), logits(fw, trained, r["inputs"]),
                               rtol=1e-4, atol=1e-5)
    exp = r["explanation"]
    t = int(exp.targets[0])
    w = r["classifier_weight"]
    assert w.shape == (2, 1024)
    (cam_weights,) = exp.extras["weights"].values()          # CAM used the checkpoint's weights
    np.testing.assert_allclose(fw.numpy(cam_weights)[0], w[t], rtol=1e-6)
    cam = r["cam"]
    assert cam.shape == (64, 64) and cam.min() == pytest.approx(0.0) and cam.max() == pytest.approx(1.0)
    expected = np.clip(np.round(0.3 * viz.colorize(cam, "jet").astype(np.float32)
                                + 0.5 * r["crop"].astype(np.float32)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(r["blended"], expected)
    np.testing.assert_array_equal(io.load_image(r["file"]), expected)   # what was written


def test_story3_lrp_vision_rules(fw, tmp_path):
    ex = load("lrp_vision")
    r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--arch", "resnet18",
                 "--size", "32", "--composites", "zero,epsilon_plus_flat"])
    ixg = xplain.explain(r["model"], r["inputs"], method="input_x_gradient").numpy()
    rel_close(r["relevance"]["zero"], ixg, 1e-4)              # LRP-0 == input x gradient
    for name, (rsum, logit) in r["sums"].items():
        np.testing.assert_allclose(rsum, r["relevance"][name].reshape(2, -1).sum(1), rtol=1e-4)
        np.testing.assert_allclose(logit, logits(fw, r["model"], r["inputs"]).max(1), rtol=1e-5)
    assert Path(r["file"]).stat().st_size > 0


def test_story4_occlusion_corner_equals_one_window(fw, tmp_path):
    ex = load("occlusion_resnet18")
    r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--size", "32",
                 "--window", "3,12,12", "--stride", "3,6,6"])
    attr = r["attributions"]["occlusion"]
    assert attr.shape == (2, 3, 32, 32)
    x = fw.numpy(r["inputs"])
    occluded = x.copy()
    occluded[:, :, :12, :12] = 0.0                           # the only window covering (0, 0)
    f = logits(fw, r["model"], r["inputs"])
    g = logits(fw, r["model"], fw.tensor(occluded))
    for i, t in enumerate(r["targets"]):
        np.testing.assert_allclose(attr[i, :, 0, 0], f[i, t] - g[i, t], rtol=1e-4, atol=1e-5)
    assert len(r["files"]) == 2


def test_story5_cnn_tour(fw, tmp_path):
    ex = load("cnn_tour")
    r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--size", "32", "--steps", "50",
                 "--cam-archs", "resnet18,squeezenet1_0", "--gradcam-arch", "resnet18",
                 "--gradcam-layer", "layer4"])
    s = r["summary"]
    # ResNet-18: parameters do not depend on the input size; mult-adds at 32^2 by hand:
    assert s["total_params"] == 11_689_512
    summary224 = ex.part_summary(ex.argparse.Namespace(framework=fw.name, seed=0, size=224))
    assert summary224["total_mult_adds"] == 1_814_073_344
    p = r["prototypes"]
    assert p["prototypes"].shape == (10, 28, 28)
    assert np.all(p["probabilities"] > p["start_probabilities"])   # each class made more likely
    assert p["probabilities"].mean() > 0.8
    sal = r["saliency"]["saliency"]
    model = fw.model("small_cnn")
    digits = ex.render_digits(np.random.default_rng(1), np.arange(10))
    raw = xplain.explain(model, fw.tensor(ex.mnist_normalize(digits)), method="saliency",
                         mode="raw", target=list(range(10))).numpy()[:, 0]
    np.testing.assert_allclose(sal, raw ** 2, rtol=1e-5, atol=1e-12)
    for m in r["cam"]["maps"].values():
        assert m.shape == (32, 32) and 0.0 <= m.min() and m.max() == pytest.approx(1.0)
    g = r["gradcam"]
    assert g["map"].shape == (32, 32)
    x = ex.io.preprocess(io.load_image(tmp_path / "tour_input.png"), 37, 32)
    assert g["target"] == int(logits(fw, fw.model("resnet18"), fw.tensor(x[None])).argmax())


def test_plugin_example_sobel_and_deletion(fw, tmp_path):
    ex = load("plugin_method")
    before = set(xplain.methods())
    try:
        r = ex.main(["--framework", fw.name, "--out", str(tmp_path), "--images", "8", "--steps", "8"])
        assert "center_prior" not in xplain.methods()           # the inline plugin was removed
        assert {"sobel_edges", "random_baseline", "center_prior"} <= set(r["methods"])
        x = fw.numpy(r["inputs"])
        exp = xplain.explain(r["model"], r["inputs"], method="sobel_edges")
        grey = x.mean(axis=1)
        for i in range(2):
            gx = cv2.Sobel(grey[i], cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_CONSTANT)
            gy = cv2.Sobel(grey[i], cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_CONSTANT)
            ref = np.sqrt(gx ** 2 + gy ** 2)
            for c in range(3):
                np.testing.assert_allclose(exp.numpy()[i, c], ref, rtol=1e-4, atol=1e-4)
        for auc in r["aucs"].values():
            assert auc.shape == (8,) and np.all((auc >= 0) & (auc <= 1))
        # the trained model's explanation removes the evidence faster than the baselines
        best = r["aucs"][r["methods"][0]].mean()
        assert best < r["aucs"]["random_baseline"].mean() and best < r["aucs"]["sobel_edges"].mean()
    finally:
        if "sobel_edges" not in before and "sobel_edges" in xplain.methods():
            xplain.plugins.unregister(name="sanity")


def test_demo_and_cli(fw, tmp_path, capsys):
    from xplain import cli, demo

    r = demo.run_demo(framework=fw.name, out=tmp_path, n=4)
    assert r["accuracy"] >= 0.95
    np.testing.assert_array_equal(r["predictions"], r["labels"])
    assert len(r["files"]) == 5 and all(Path(f).is_file() for f in r["files"])
    assert r["method"] == ("lrp" if "lrp" in xplain.methods() else "input_x_gradient")
    assert cli.main(["demo", "--framework", fw.name, "--out", str(tmp_path / "cli"),
                     "--images", "2", "--method", "saliency"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on 200 freshly generated" in out and "saliency" in out
    assert len(list((tmp_path / "cli").glob("*.png"))) == 3
    assert cli.main(["summary", "--model", "resnet18", "--framework", fw.name]) == 0
    assert "11,689,512" in capsys.readouterr().out
    assert cli.main(["methods"]) == 0 and "saliency" in capsys.readouterr().out
    assert cli.main(["summary", "--model", "nope", "--framework", fw.name]) == 2


def test_demo_weights_identical_in_both_frameworks_layout(fw):
    from xplain import demo

    w = demo.load_weights()
    assert sum(v.nbytes for v in w.values()) < 1_000_000
    model = demo.build_model(fw.name)
    names = {i.name for i in fw.B.layers(model)}
    assert {"0", "3", "6", "10"} <= names
    lin = [i for i in fw.B.layers(model) if i.kind == "linear"][0]
    np.testing.assert_array_equal(fw.numpy(lin.params["weight"]), w["10.weight"])   # (out, in)


def test_train_demo_model_script_runs(fw, tmp_path):
    if fw.name != "torch":
        pytest.skip("the training script uses PyTorch")
    ex = load("train_demo_model")
    r = ex.main(["--out", str(tmp_path / "w.npz"), "--train", "128", "--epochs", "1",
                 "--eval", "100"])
    from xplain import demo

    w = demo.load_weights(tmp_path / "w.npz")
    assert set(w) == set(demo.load_weights()) and 0.0 <= r["accuracy"] <= 1.0


def test_heatmap_of_cam_explanation_is_batched(fw):
    model = fw.model("resnet18")
    x = fw.tensor(np.random.default_rng(0).normal(size=(3, 3, 32, 32)))
    exp = xplain.explain(model, x, method="gradcam", layer="layer4")
    maps = viz.heatmap(exp, clip_percentile=0.0)             # (3, 32, 32): three images, not channels
    assert maps.shape == (3, 32, 32)
    np.testing.assert_allclose(maps, exp.numpy() / np.maximum(exp.numpy().max(axis=(1, 2), keepdims=True), 1e-12),
                               rtol=1e-5, atol=1e-7)
