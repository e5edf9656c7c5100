"""The user's own FLAME model as a `SkinnedHead`, read without chumpy and without running code from the file.

FLAME is licensed (https://flame.is.tue.mpg.de) and never ships with timar: pass its path with `--flame PATH`
(the nodes: parameter `flame`) or set TIMAR_FLAME. Two formats are read:

- `generic_model.pkl` of FLAME 2020 (or 2023): a Python 2 pickle of a dict whose arrays are numpy arrays,
  chumpy `Ch` objects and a scipy sparse `J_regressor`. It is read by `_FlameUnpickler`, which builds only
  numpy arrays, dtypes, sets, latin-1 bytes (how Python 3 writes bytes at protocols 0-2) and inert stand-ins
  for the chumpy and scipy classes (their state dicts are kept, no method of theirs exists here), and refuses
  any other global the pickle names (`os.system`, `eval`, ...) before anything runs. The stand-ins are then
  turned into plain arrays (a `Ch`'s value is its `x`).
- an `.npz` with the same keys (the conversion many projects use), read with allow_pickle=False.

Keys used: v_template (V, 3), shapedirs (V, 3, 300 + E) whose components after FLAME's 300 identity
components are the expression basis (the first 50 are used), posedirs (V, 3, 36), J_regressor (5, V),
weights (V, 5), kintree_table (2, 5), f (F, 3). A missing, malformed or refused file is one `FlameError`.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from timar_model.motion import EXP_DIM
from timar_model.view.skinning import N_JOINTS, PARENTS, POSE_FEATURES, SkinnedHead

FLAME_ENV = "TIMAR_FLAME"
SHAPE_COMPONENTS = 300  # FLAME's identity shape components come first in shapedirs, then expression
SKIN = (0.86, 0.70, 0.60)  # RGB of the FLAME surface
REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


class FlameError(ValueError):
    """The FLAME model file is missing, malformed or refused."""


def flame_path(path: str | os.PathLike | None = None) -> Path | None:
    """The FLAME model to use: `path` if given and not empty, else $TIMAR_FLAME, else None (procedural head)."""
    chosen = str(path) if path not in (None, "") else os.environ.get(FLAME_ENV, "")
    return Path(chosen).expanduser() if chosen else None


# ------------------------------------------------------------------ restricted unpickling
class _StandIn:
    """An inert object standing for a class of the pickle (chumpy, scipy.sparse): keeps its state only."""

    source = ""  # "module.name" of the class it stands for

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChumpyStandIn(_StandIn):
    pass


class _SparseStandIn(_StandIn):
    pass


_STAND_INS: dict[tuple[str, str], type[_StandIn]] = {}


def _stand_in(base: type[_StandIn], module: str, name: str) -> type[_StandIn]:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(f"StandIn_{name}", (base,), {"source": f"{module}.{name}"})
    return _STAND_INS[key]


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own array and scalar rebuilders, wherever they live
_NP_SCALAR = np.float64(0.0).__reduce__()[0]


def _ndarray_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array of class {subtype!r}")
    return _NP_RECONSTRUCT(np.ndarray, shape, typecode)


def _dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays")
    return dt


def _scalar(dtype: Any, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("object scalars")
    return _NP_SCALAR(dtype, *args)


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles bytes at protocols 0-2 (a re-saved model): _codecs.encode(text, "latin1")."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> _StandIn:
    if not (isinstance(cls, type) and issubclass(cls, _StandIn)) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"copy_reg._reconstructor of {cls!r}")
    return cls.__new__(cls)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _ndarray_reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _latin1_bytes,
    **{(m, n): getattr(builtins, n) for m in ("__builtin__", "builtins")
       for n in ("set", "frozenset", "object")},
}
_SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix")


class _FlameUnpickler(pickle.Unpickler):
    """Builds numpy arrays, sets and stand-ins only; any other global refuses the whole file."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(_ChumpyStandIn, module, name)
        if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
            return _stand_in(_SparseStandIn, module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _sparse_to_dense(obj: _SparseStandIn) -> np.ndarray:
    st = obj.state if isinstance(obj.state, dict) else {}
    shape = st.get("_shape", st.get("shape"))
    kind = obj.source.rsplit(".", 1)[-1][:3]
    if shape is None or not all(k in st for k in (("row", "col", "data") if kind == "coo"
                                                  else ("data", "indices", "indptr"))):
        raise FlameError(f"sparse matrix {obj.source} without its data")
    dense = np.zeros(tuple(int(s) for s in shape))
    data = np.asarray(_plain(st["data"]), dtype=np.float64)
    if kind == "coo":
        np.add.at(dense, (np.asarray(_plain(st["row"])), np.asarray(_plain(st["col"]))), data)
        return dense
    indptr, indices = np.asarray(_plain(st["indptr"])), np.asarray(_plain(st["indices"]))
    outer = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    if kind == "csc":
        np.add.at(dense, (indices, outer), data)
    else:
        np.add.at(dense, (outer, indices), data)
    return dense


def _plain(obj: Any) -> Any:
    """Stand-ins -> numpy arrays (a chumpy Ch is its value `x`; sparse matrices become dense)."""
    if isinstance(obj, _ChumpyStandIn):
        st = obj.state
        if not isinstance(st, dict) or "x" not in st:
            raise FlameError(f"chumpy object {obj.source} holds no plain value 'x' (a computed chumpy "
                             "expression, which this reader does not evaluate)")
        return np.asarray(_plain(st["x"]), dtype=np.float64)
    if isinstance(obj, _SparseStandIn):
        return _sparse_to_dense(obj)
    return obj


def read_flame_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The FLAME model's arrays (REQUIRED keys) from a generic_model.pkl or an .npz; FlameError if not."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"FLAME model not found: {path} (get generic_model.pkl from https://flame.is.tue.mpg.de "
                         f"and give its path: --flame PATH, the nodes' parameter `flame`, or {FLAME_ENV}; without "
                         "one the procedural head is used)")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04":  # a zip: the .npz conversion
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                data: dict[str, Any] = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise FlameError(f"{path}: not a readable FLAME .npz ({e})") from None
    else:
        try:
            data = _FlameUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise FlameError(f"{path}: refused to read: {e}. A FLAME model holds only arrays, chumpy and scipy "
                             "sparse objects; this pickle asks for more (it may be malicious). Nothing in it "
                             "was run.") from None
        except Exception as e:  # truncated or not a pickle at all
            raise FlameError(f"{path}: not a FLAME model pickle ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict):
            raise FlameError(f"{path}: not a FLAME model (the pickle holds a {type(data).__name__}, not a dict)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise FlameError(f"{path}: not a FLAME model: missing {missing} (has {sorted(map(str, data))})")
    try:
        return {k: np.asarray(_plain(data[k])) for k in REQUIRED}
    except (TypeError, ValueError) as e:
        raise FlameError(f"{path}: malformed FLAME array ({e})") from None


def load_flame(path: str | os.PathLike) -> SkinnedHead:
    """A FLAME model file -> SkinnedHead (expression basis = shapedirs components 300..349); FlameError if the
    file is missing, malformed or refused."""
    a = read_flame_arrays(path)
    v = a["v_template"].shape[0] if a["v_template"].ndim == 2 else -1
    shapes = {
        "v_template": (v, 3), "posedirs": (v, 3, POSE_FEATURES), "J_regressor": (N_JOINTS, v),
        "weights": (v, N_JOINTS), "kintree_table": (2, N_JOINTS),
    }
    for key, shape in shapes.items():
        if a[key].shape != shape:
            raise FlameError(f"{path}: {key} has shape {a[key].shape}, FLAME's is {shape}")
    sd = a["shapedirs"]
    if sd.ndim != 3 or sd.shape[:2] != (v, 3) or sd.shape[2] < SHAPE_COMPONENTS + EXP_DIM:
        raise FlameError(f"{path}: shapedirs has shape {sd.shape}; FLAME's is ({v}, 3, {SHAPE_COMPONENTS} shape "
                         f"+ >= {EXP_DIM} expression components)")
    f = a["f"]
    if f.ndim != 2 or f.shape[1] != 3 or f.size == 0 or f.min() < 0 or f.max() >= v:
        raise FlameError(f"{path}: f must be (F, 3) vertex indices below {v}, got shape {f.shape}")
    parents = a["kintree_table"][0].astype(np.int64)
    parents[0] = -1  # FLAME stores the root's parent as the largest uint32
    if not np.array_equal(parents, PARENTS):
        raise FlameError(f"{path}: kintree_table parents {parents.tolist()} are not FLAME's {PARENTS.tolist()}")
    for key in REQUIRED:
        if not np.all(np.isfinite(a[key].astype(np.float64))):
            raise FlameError(f"{path}: {key} holds NaN or inf")
    template = a["v_template"].astype(np.float64)
    return SkinnedHead(
        name="flame",
        template=template,
        faces=f.astype(np.int64),
        weights=a["weights"].astype(np.float64),
        joints=a["J_regressor"].astype(np.float64) @ template,
        colors=np.tile(np.array(SKIN), (v, 1)),
        joint_regressor=a["J_regressor"].astype(np.float64),
        exp_basis=sd[:, :, SHAPE_COMPONENTS:SHAPE_COMPONENTS + EXP_DIM].astype(np.float64),
        posedirs=a["posedirs"].reshape(v * 3, POSE_FEATURES).astype(np.float64),
        closed=False,
    )
