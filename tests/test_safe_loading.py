"""Files are data, never code: weight files are read by loaders that cannot run what a file names
(xplain.weights, the examples' load_checkpoint), and no source file unpickles with a loader that
can. Malicious pickles carry a live payload (checked with the stdlib loader) that must not run."""
from __future__ import annotations

import ast
import builtins
import collections
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import xplain
from xplain import weights
from xplain.weights import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("xplain", "examples", "backends", "plugins", "benchmarks")


def _write_marker(path: str) -> None:
    """The payload: proof that code from a file ran."""
    Path(path).write_text("the payload ran")


class Payload:
    """Pickles as a call of ``fn(*args)``: what a malicious checkpoint does when unpickled."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "module function": Payload(_write_marker, str(marker)),
        "builtins.exec": Payload(builtins.exec, code),
        "builtins.eval": Payload(builtins.eval, code),         # paddle's own DenseTensor reducer
        "object array": np.array([Payload(_write_marker, str(marker))], dtype=object),
        "paddle tensor tuple": ("linear_0.w_0", Payload(_write_marker, str(marker))),
        "OrderedDict value": collections.OrderedDict(w=Payload(_write_marker, str(marker))),
    }


def evil_file(path: Path, payload: object, protocol: int) -> Path:
    state = {"0.weight": np.ones((2, 3), np.float32), "0.bias": np.zeros(2, np.float32),
             "evil": payload}
    path.write_bytes(pickle.dumps(state, protocol=protocol))
    return path


def examples_common():
    """``examples/_common.py`` as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location("examples_common", ROOT / "examples" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- malicious files ---------------------------------------------------------------------------
@pytest.mark.core
@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("kind", list(payloads(Path("m"))))
def test_malicious_pdparams_is_refused_and_its_payload_never_runs(tmp_path, kind, protocol):
    live = tmp_path / "live"
    with open(evil_file(tmp_path / "live.pdparams", payloads(live)[kind], protocol), "rb") as f:
        pickle.load(f)  # the stdlib loader runs it: the payload is real
    assert live.exists()
    marker = tmp_path / "marker"
    path = evil_file(tmp_path / "evil.pdparams", payloads(marker)[kind], protocol)
    with pytest.raises(CheckpointError, match=r"refused to load .*not a plain-arrays checkpoint"):
        weights.load_pdparams(path)
    with pytest.raises(xplain.XplainError, match="refused to load"):
        examples_common().load_checkpoint(path, "paddle")
    assert not marker.exists()


@pytest.mark.core
def test_refusal_names_the_class(tmp_path):
    path = evil_file(tmp_path / "e.pdparams", Payload(_write_marker, str(tmp_path / "m")), 4)
    with pytest.raises(CheckpointError, match=r"refused to load [\w.]*test_safe_loading\._write_marker"):
        weights.load_arrays(path)
    with pytest.raises(CheckpointError, match=r"refused to load (posix|os|nt)\.system"):
        weights.load_arrays(evil_file(tmp_path / "s.pdparams", Payload(os.system, "true"), 2))
    assert not (tmp_path / "m").exists()


@pytest.mark.core
def test_other_non_array_content_is_refused(tmp_path):
    import codecs

    rot = evil_file(tmp_path / "codec.pdparams", Payload(codecs.encode, "abc", "rot13"), 2)
    with pytest.raises(CheckpointError, match="latin-1"):
        weights.load_arrays(rot)                                 # _codecs.encode, other codec
    objects = evil_file(tmp_path / "obj.pdparams", np.array(["a", 1], dtype=object), 4)
    with pytest.raises(CheckpointError, match="Python objects"):
        weights.load_arrays(objects)                             # harmless, but not weights

    class PersistentPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, bytes) else None

    with open(tmp_path / "pid.pdparams", "wb") as f:
        PersistentPickler(f, protocol=2).dump({"w": b"\x00" * 8})
    with pytest.raises(CheckpointError, match="plain arrays"):
        weights.load_arrays(tmp_path / "pid.pdparams")          # PyTorch-style storages
    (tmp_path / "list.pdparams").write_bytes(pickle.dumps([np.zeros(2)], protocol=4))
    with pytest.raises(CheckpointError, match="not a dict"):
        weights.load_arrays(tmp_path / "list.pdparams")
    np.savez(tmp_path / "obj.npz", a=np.array([{}], dtype=object))
    with pytest.raises(CheckpointError, match="plain arrays"):
        weights.load_arrays(tmp_path / "obj.npz")               # allow_pickle=False
    with zipfile.ZipFile(tmp_path / "model.pth", "w") as z:     # the layout of torch.save
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        weights.load_arrays(tmp_path / "model.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a weights file"):
        weights.load_arrays(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="no weights file"):
        weights.load_arrays(tmp_path / "missing.pdparams")


# ---- genuine files, framework-free ---------------------------------------------------------------
def reference_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.normal(size=4).astype(np.float32),
            "bn._mean": np.zeros(4, np.float32), "step": np.array(7, np.int64),
            "fc.weight": np.asfortranarray(rng.normal(size=(5, 4))).astype(np.float64)}


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.core
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pdparams_layouts_paddle_writes_load_as_arrays(tmp_path, protocol):
    ref = reference_state()
    cases = {
        "flat": collections.OrderedDict(ref),
        "name table": {**ref, weights.NAME_TABLE: {k: f"param_{i}" for i, k in enumerate(ref)}},
        "nested tensors": {"model": collections.OrderedDict((k, (f"t_{k}", v)) for k, v in ref.items()),
                           "epoch": 3, "note": "kept out"},
        "state_dict entry": {"state_dict": ref, "epoch": 3},
        "DataParallel": weights.add_prefix(ref),
    }
    for name, obj in cases.items():
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert weights.file_kind(path) == "pickle"
        got = weights.load_arrays(path)
        if name == "nested tensors":
            got = {k.removeprefix("model."): v for k, v in got.items()}
        if name == "DataParallel":
            got = weights.strip_prefix(got)
        assert_same(got, ref)
    # arrays over 4 GB are split by paddle.save for protocols 2/3; reassembled in order
    split = {"a@@.0": ref["conv.weight"].reshape(-1)[:50], "a@@.1": ref["conv.weight"].reshape(-1)[50:],
             weights.BIG_PARAMS: {"a": {"OriginShape": (4, 3, 3, 3), "slices": ["a@@.0", "a@@.1"]}}}
    (tmp_path / "big.pdparams").write_bytes(pickle.dumps(split, protocol=protocol))
    assert_same(weights.load_arrays(tmp_path / "big.pdparams"), {"a": ref["conv.weight"]})


@pytest.mark.core
def test_safetensors_and_npz_round_trip(tmp_path, monkeypatch):
    st = pytest.importorskip("safetensors.numpy")
    ref = {k: np.ascontiguousarray(v) for k, v in reference_state().items()}
    st.save_file(ref, str(tmp_path / "w.safetensors"))
    assert weights.file_kind(tmp_path / "w.safetensors") == "safetensors"
    got = weights.load_arrays(tmp_path / "w.safetensors")
    assert_same(dict(sorted(got.items())), dict(sorted(ref.items())))
    np.savez(tmp_path / "w.npz", **ref)
    assert weights.file_kind(tmp_path / "w.npz") == "npz"
    assert_same(weights.load_arrays(tmp_path / "w.npz"), ref)
    monkeypatch.setitem(sys.modules, "safetensors", None)         # as if it were not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(CheckpointError, match="pip install safetensors"):
        weights.load_arrays(tmp_path / "w.safetensors")


@pytest.mark.core
def test_check_state_reports_missing_unexpected_and_shapes():
    own = {"a.weight": (2, 3), "a.bias": (2,)}
    weights.check_state(own, {"a.weight": np.zeros((2, 3)), "a.bias": np.zeros(2)})
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. \['a.bias'\]\).*1 unexpected"):
        weights.check_state(own, {"a.weight": np.zeros((2, 3)), "b": np.zeros(1)})
    with pytest.raises(CheckpointError, match=r"a.weight: file \(3, 2\), model \(2, 3\)"):
        weights.check_state(own, {"a.weight": np.zeros((3, 2)), "a.bias": np.zeros(2)})
    with pytest.raises(CheckpointError, match=r"strip_prefix\(state, 'model.'\)"):
        weights.check_state(own, {"model.a.weight": np.zeros((2, 3)), "model.a.bias": np.zeros(2)})


# ---- genuine files of the backend under test ---------------------------------------------------
def test_framework_checkpoints_load_equal_to_the_model(fw, tmp_path):
    common = examples_common()
    trained = fw.model("tutorial_cnn", seed=7)
    state = {k: fw.numpy(v) for k, v in trained.state_dict().items()}
    native = tmp_path / ("model.pdparams" if fw.name == "paddle" else "model.pth")
    fw.module.save(weights.add_prefix(trained.state_dict()), str(native))   # DataParallel keys
    if fw.name == "paddle":
        assert weights.file_kind(native) == "pickle"
        assert_same(weights.strip_prefix(weights.load_pdparams(native)), state)
    files = [native]
    if importlib.util.find_spec("safetensors") is not None:  # an optional dependency
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "m.safetensors"))
        files.append(tmp_path / "m.safetensors")
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    with fw.B.no_grad():
        expected = fw.numpy(fw.B.forward(trained, x))
    for path in files:
        loaded = common.load_checkpoint(path, fw.name)
        assert_same(dict(sorted(loaded.items())), dict(sorted(state.items())))
        model = common.load_into(fw.model("tutorial_cnn", seed=0), loaded, fw.name)
        with fw.B.no_grad():
            np.testing.assert_allclose(fw.numpy(fw.B.forward(model, x)), expected, rtol=1e-6)
    wrong = dict(loaded)
    wrong.pop(next(iter(wrong)))
    with pytest.raises(CheckpointError, match="1 missing"):
        common.load_into(fw.model("tutorial_cnn"), wrong, fw.name)


def test_malicious_file_for_the_backend_under_test_never_runs(fw, tmp_path):
    """The framework's own file name and loader path: a ``.pth`` goes to ``torch.load`` with
    ``weights_only=True``, a ``.pdparams`` to the arrays-only unpickler."""
    marker = tmp_path / "marker"
    suffix = ".pth" if fw.name == "torch" else ".pdparams"
    path = tmp_path / f"evil{suffix}"
    if fw.name == "torch":
        fw.module.save({"w": Payload(_write_marker, str(marker))}, str(path))
    else:
        evil_file(path, Payload(_write_marker, str(marker)), 4)
    with pytest.raises(xplain.XplainError):
        examples_common().load_checkpoint(path, fw.name)
    assert not marker.exists()


# ---- no source file unpickles with a loader that can run code --------------------------------
_TEXT = re.compile(r"\b(paddle\.load|pickle\.loads?|cPickle\.loads?|dill\.loads?|joblib\.load)\s*\(")


def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that may unpickle arbitrary objects: ``paddle.load(``, ``pickle.load(``
    (and friends) anywhere in the text; ``torch.load`` without ``weights_only=True``;
    ``np.load``/``numpy.load`` with ``allow_pickle`` other than ``False``; ``pickle.Unpickler(...)``
    itself (a subclass with a restricted ``find_class`` is fine); imports of those loaders."""
    found = [m.group(0) for m in _TEXT.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "torch", "paddle", "dill"):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name in ("load", "loads", "Unpickler")]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, name = ast.unparse(node.func.value), node.func.attr
        kw = {k.arg: k.value for k in node.keywords}
        const = {k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)}
        if owner == "torch" and name == "load" and const.get("weights_only") is not True:
            found.append(ast.unparse(node))
        if owner in ("np", "numpy") and name == "load" and "allow_pickle" in kw \
                and const.get("allow_pickle") is not False:
            found.append(ast.unparse(node))
        if owner == "pickle" and name == "Unpickler":
            found.append(ast.unparse(node))
    return found


@pytest.mark.core
def test_the_scanner_finds_unsafe_loads():
    bad = ["paddle.load(p)", "pickle.load(f)", "pickle.loads(b)", "torch.load(p)",
           "torch.load(p, weights_only=False)", "torch.load(p, map_location='cpu')",
           "np.load(p, allow_pickle=True)", "numpy.load(p, allow_pickle=flag)",
           "pickle.Unpickler(f).load()", "from torch import load", "from pickle import loads"]
    for snippet in bad:
        assert unsafe_loads(snippet), snippet
    good = ["torch.load(p, map_location='cpu', weights_only=True)", "np.load(p)",
            "np.load(p, allow_pickle=False)", "json.loads(s)", "ep.load()",
            "class U(pickle.Unpickler):\n    pass\nU(f).load()"]
    for snippet in good:
        assert not unsafe_loads(snippet), snippet


@pytest.mark.core
def test_no_source_file_unpickles_untrusted_data():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20 and ROOT / "xplain" / "weights.py" in files
    offenders = {str(p.relative_to(ROOT)): hits for p in files
                 if (hits := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert offenders == {}, "use xplain.weights / torch.load(weights_only=True) instead"
