"""Weight files read as data, never as code (docs/architecture.md §9).

A pickle runs whatever its ``__reduce__`` names while it is read, so a downloaded checkpoint
must never reach :mod:`pickle`'s default loader (nor ``paddle.load``, which is that loader).
This module reads, with numpy only (no framework is imported here):

* ``.safetensors`` — through the optional ``safetensors`` package (``pip install safetensors``);
* ``.npz`` — with ``allow_pickle=False``;
* PaddlePaddle's ``.pdparams`` / ``.pdopt`` — a pickle of ``name → numpy array`` (protocol 2–5,
  maybe nested, maybe with paddle's name table), through an unpickler that admits only the few
  callables numpy arrays and plain containers are rebuilt with and refuses everything else
  before it runs.

PyTorch's ``.pth`` files are zip archives of pickles: read them with
``torch.load(path, weights_only=True)`` (PyTorch's own restricted unpickler), then hand the
arrays to the functions here (:func:`state_arrays`, :func:`strip_prefix`).
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CheckpointError

# paddle.save's bookkeeping entries (paddle/framework/io.py): a structured-name → parameter-name
# table (old dygraph checkpoints), and how arrays over 4 GB were split for protocols 2 and 3
NAME_TABLE = "StructuredToParameterName@@"
BIG_PARAMS = "UnpackBigParamInfor@@"



# ---- state dicts: DataParallel prefixes, names and shapes --------------------------------------
def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove ``prefix`` from every key that has it (checkpoints saved from
    ``nn.DataParallel`` / ``DistributedDataParallel`` prefix every key with ``module.``).
    Keys without the prefix are kept unchanged; order is preserved."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def add_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """The inverse of :func:`strip_prefix` (to write a DataParallel-style checkpoint)."""
    return {prefix + k: v for k, v in state_dict.items()}


def check_state(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray]) -> None:
    """Refuse ``state`` unless it has exactly the names of ``expected`` (name → shape of the
    model's own state) with the same shapes; the message lists what is missing, unexpected or
    misshapen, and names a prefix to strip when every extra name carries one."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k])}" for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:3])})")
    hint = "; is it a checkpoint of this architecture and framework layout?"
    head = unexpected[0].split(".", 1)[0] + "." if unexpected else ""
    if head and all(k.startswith(head) for k in unexpected) and \
            set(strip_prefix(state, head)) >= set(missing):
        hint = f"; every extra name starts with {head!r}: strip it with strip_prefix(state, {head!r})"
    raise CheckpointError(f"the checkpoint does not fit the model: {', '.join(problems)}{hint}")


# ---- the restricted unpickler ------------------------------------------------------------------
def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes written as latin-1 text), and
    nothing else: no other codec is reachable from a file."""
    if encoding.replace("-", "").lower() != "latin1":
        raise CheckpointError(f"the file asks for codec {encoding!r}; a plain-arrays checkpoint "
                              f"only encodes bytes as latin-1")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    """The callables a pickle of numpy arrays in plain containers references, under every module
    name numpy 1.x and 2.x write (``numpy.core`` became ``numpy._core``). The functions are taken
    from numpy's own reductions, so no deprecated module is imported to find them."""
    reconstruct = np.zeros(1).__reduce__()[0]           # numpy.*core.multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]              # numpy.*core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]        # numpy.*core.numeric._frombuffer (proto 5)
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # paddle.save reduces a Tensor inside a nested structure to tuple((name, array))
        ("builtins", "tuple"): tuple, ("__builtin__", "tuple"): tuple,
        ("_codecs", "encode"): _latin1,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class ArraysUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that rebuilds numpy arrays, numpy scalars and plain containers
    only. Any other global — ``os.system``, ``builtins.eval``, a class of the saving program — is
    refused in :meth:`find_class`, i.e. before it can be called; persistent ids (PyTorch's
    storages) are refused by the base class."""

    ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused to load {module}.{name}: the file is not a plain-arrays checkpoint "
                f"(a pickle that calls {module}.{name} while it is read could run any code); "
                f"re-save it as safetensors, or as a state dict of arrays") from None


def read_pickle(file: BinaryIO) -> Any:
    """Unpickle ``file`` with :class:`ArraysUnpickler` (raw: nested containers as saved)."""
    try:
        return ArraysUnpickler(file).load()
    except CheckpointError:
        raise
    except Exception as e:  # corrupt or truncated data, a persistent id, a BUILD on a dict ...
        raise CheckpointError(f"cannot read the pickle as plain arrays: {type(e).__name__}: {e}; "
                              f"is it a PaddlePaddle .pdparams state dict?") from e


# ---- from a loaded object to name → array --------------------------------------------------
def _join_big_params(d: dict[str, Any]) -> dict[str, Any]:
    """Undo paddle.save's splitting of arrays over 4 GB (protocols 2 and 3)."""
    info = d.pop(BIG_PARAMS)
    for key, value in info.items():
        parts = [d.pop(part) for part in value["slices"]]
        d[key] = np.concatenate(parts).reshape(value["OriginShape"])
    return d


def state_arrays(obj: Any, convert: Callable[[Any], np.ndarray | None] | None = None
                 ) -> dict[str, np.ndarray]:
    """The arrays of a loaded checkpoint as one flat ``name → array`` dict.

    A ``"state_dict"`` entry is taken when there is one (training scripts save
    ``{"state_dict": ..., "epoch": ...}``); nested dicts are flattened with dotted names;
    paddle's name table and big-array bookkeeping are resolved; a paddle tensor saved inside a
    structure (a ``(name, array)`` pair) becomes its array. Leaves that are not arrays
    (epoch counters, strings, lists) are left out — a model that needs them reports them
    missing when loaded. ``convert`` turns a framework's tensor into numpy (``None`` to skip).
    Object arrays are refused: they are not weights.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"the file holds a {type(obj).__name__}, not a dict of arrays; "
                              f"save model.state_dict()")
    d = dict(obj)
    if isinstance(d.get("state_dict"), Mapping):
        d = dict(d["state_dict"])
    d.pop(NAME_TABLE, None)
    if BIG_PARAMS in d:
        d = _join_big_params(d)
    out: dict[str, np.ndarray] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in state_arrays(value, convert).items()})
            continue
        if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
                and isinstance(value[1], np.ndarray)):
            value = value[1]
        elif convert is not None and not isinstance(value, np.ndarray):
            value = convert(value)
        if not isinstance(value, np.ndarray):
            continue
        if value.dtype.hasobject:
            raise CheckpointError(f"entry {key!r} is an array of Python objects ({value.dtype}); "
                                  f"a weights file holds numeric arrays only")
        out[str(key)] = value
    return out


# ---- file formats ------------------------------------------------------------------------------
def file_kind(path: str | Path) -> str:
    """``"safetensors"``, ``"npz"``, ``"zip"`` (another zip archive: PyTorch's format),
    ``"pickle"`` (paddle's format, PyTorch's legacy one) or ``"unknown"`` — from the content of
    the file, not its name."""
    if not Path(path).is_file():
        raise CheckpointError(f"no weights file at {str(path)!r}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and struct.unpack("<Q", head[:8])[0] > 1 and head[8:9] == b"{":
        return "safetensors"  # little-endian header size, then the JSON header
    return "unknown"


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """``name → array`` from a ``.safetensors`` file (needs ``pip install safetensors``)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a safetensors file; reading it needs the safetensors "
                              f"package: pip install safetensors") from None
    try:
        return dict(load_file(str(path)))
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e


def load_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """``name → array`` from a PaddlePaddle ``.pdparams`` / ``.pdopt`` file, read with
    :class:`ArraysUnpickler` (never ``paddle.load``: that unpickles anything)."""
    with open(path, "rb") as f:
        return state_arrays(read_pickle(f))


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """``name → array`` from an ``.npz`` archive (``allow_pickle=False``: object arrays refused)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        raise CheckpointError(f"cannot read {path} as plain arrays: {e}") from e


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """``name → array`` from any weights file xplain can read without a framework:
    safetensors, npz or a paddle pickle, recognised by content. A PyTorch ``.pth`` (a zip with a
    pickle inside) is refused with a pointer to ``torch.load(..., weights_only=True)``."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "safetensors":
        return load_safetensors(path)
    if kind == "pickle":
        return load_pdparams(path)
    if kind == "npz":
        return load_npz(path)
    if kind == "zip":
        raise CheckpointError(f"{path} is a PyTorch checkpoint (a zip archive with a pickle "
                              f"inside); load it with torch.load(path, weights_only=True)")
    raise CheckpointError(f"{path} is not a weights file xplain reads (safetensors, .npz, "
                          f"PaddlePaddle .pdparams, or PyTorch via torch.load(weights_only=True))")
