"""FLAME's linear blend skinning and the FLAME file reader, on a small synthetic model in FLAME's layout.

The model is pickled the way FLAME's generic_model.pkl is: a dict of numpy arrays, chumpy `Ch` objects (a
stand-in class in a fake `chumpy.ch` module that exists only while pickling) and a scipy sparse J_regressor,
with pickle protocols 1 and 2 (Python 2's). The reader must map the chumpy objects to numpy without importing
chumpy or running any of their code, and refuse a pickle that would run code.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from timar_model.motion import EXP, HEAD_ROT, JAW, MOTION_DIM
from timar_model.runtime.robot_head import axis_angle_to_matrix
from timar_model.view.flame import SHAPE_COMPONENTS, FlameError, flame_path, load_flame
from timar_model.view.skinning import N_JOINTS, POSE_FEATURES

V = 60
RNG = np.random.default_rng(7)
JAW_ONLY = np.arange(0, 15)  # weighted fully to the jaw
BLEND = np.arange(15, 20)  # half jaw, half neck
EYE_L, EYE_R = np.arange(20, 25), np.arange(25, 30)
ROOT_ONLY = np.arange(30, V)  # the skull: joint 0 only
SETSTATE_CALLS: list[int] = []  # the stand-in Ch records here if anything ever runs its code


def _weights() -> np.ndarray:
    w = np.zeros((V, N_JOINTS))
    w[JAW_ONLY, 2] = 1.0
    w[BLEND, 1] = 0.5
    w[BLEND, 2] = 0.5
    w[EYE_L, 3] = 1.0
    w[EYE_R, 4] = 1.0
    w[ROOT_ONLY, 0] = 1.0
    return w


def synthetic_arrays(posedirs: bool = True) -> dict[str, np.ndarray]:
    """A FLAME-layout model with V vertices (shapes as FLAME 2020's, fewer vertices)."""
    import scipy.sparse

    template = RNG.normal(0.0, 0.05, (V, 3))
    regressor = np.zeros((N_JOINTS, V))
    for k, verts in enumerate([ROOT_ONLY, ROOT_ONLY[:10], JAW_ONLY, EYE_L, EYE_R]):
        regressor[k, verts] = 1.0 / verts.size
    faces = np.array([[i, (i + 1) % V, (i + 2) % V] for i in range(0, V - 2, 3)], dtype=np.uint32)
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": template,
        "shapedirs": RNG.normal(0.0, 1e-3, (V, 3, SHAPE_COMPONENTS + 100)),
        "posedirs": RNG.normal(0.0, 1e-3, (V, 3, POSE_FEATURES)) if posedirs else np.zeros((V, 3, POSE_FEATURES)),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "weights": _weights(),
        "kintree_table": kintree,
        "f": faces,
        "bs_type": "lrotmin",
        "bs_style": "lbs",
    }


def _fake_chumpy():
    """A `chumpy.ch.Ch` look-alike that pickles as the real one does (state = its __dict__ without caches)."""
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

        def __getstate__(self) -> dict:
            return dict(self.__dict__)

        def __setstate__(self, state: dict) -> None:  # never called by the reader
            SETSTATE_CALLS.append(1)
            self.__dict__.update(state)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    pkg = types.ModuleType("chumpy")
    pkg.ch = ch
    return pkg, ch


def write_flame_pickle(path: Path, arrays: dict[str, np.ndarray], protocol: int = 2) -> None:
    """Pickle `arrays` as FLAME's generic_model.pkl: v_template and shapedirs as chumpy objects."""
    pkg, ch = _fake_chumpy()
    data = dict(arrays)
    data["v_template"] = ch.Ch(arrays["v_template"])
    data["shapedirs"] = ch.Ch(arrays["shapedirs"])
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch
    try:
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def write_flame_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    plain = {k: (v.toarray() if hasattr(v, "toarray") else v) for k, v in arrays.items() if k not in ("bs_type",
                                                                                                       "bs_style")}
    np.savez(path, **plain)


def motion(jaw=(0.0, 0.0, 0.0), rot=(0.0, 0.0, 0.0), exp=None) -> np.ndarray:
    m = np.zeros(MOTION_DIM)
    m[JAW], m[HEAD_ROT] = jaw, rot
    if exp is not None:
        m[EXP] = exp
    return m


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return synthetic_arrays()


@pytest.mark.parametrize("protocol", [1, 2])
def test_pickle_with_chumpy_objects_reads_without_chumpy_or_its_code(tmp_path, arrays, protocol):
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, arrays, protocol)
    assert b"chumpy.ch" in path.read_bytes()  # the pickle really names chumpy's class
    SETSTATE_CALLS.clear()
    head = load_flame(path)
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    assert SETSTATE_CALLS == []
    np.testing.assert_array_equal(head.template, arrays["v_template"])
    np.testing.assert_array_equal(head.joint_regressor, arrays["J_regressor"].toarray())
    np.testing.assert_array_equal(head.exp_basis, arrays["shapedirs"][:, :, SHAPE_COMPONENTS:SHAPE_COMPONENTS + 50])
    np.testing.assert_array_equal(head.faces, arrays["f"].astype(np.int64))


def test_npz_conversion_reads_the_same(tmp_path, arrays):
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    write_flame_npz(tmp_path / "m.npz", arrays)
    a, b = load_flame(tmp_path / "m.pkl"), load_flame(tmp_path / "m.npz")
    m = motion(jaw=(0.3, 0.0, 0.0), rot=(0.1, -0.4, 0.05), exp=RNG.normal(0, 1, 50))
    np.testing.assert_allclose(a.pose(m), b.pose(m), atol=1e-12)


def test_zero_pose_is_template_plus_blendshapes(tmp_path, arrays):
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    head = load_flame(tmp_path / "m.pkl")
    np.testing.assert_allclose(head.pose(motion()), arrays["v_template"], atol=1e-12)
    exp = RNG.normal(0.0, 2.0, 50)
    expected = arrays["v_template"] + arrays["shapedirs"][:, :, SHAPE_COMPONENTS:SHAPE_COMPONENTS + 50] @ exp
    np.testing.assert_allclose(head.pose(motion(exp=exp)), expected, atol=1e-12)


def test_jaw_at_90_degrees_moves_exactly_the_vertices_it_weights(tmp_path):
    arrays = synthetic_arrays(posedirs=False)  # rigid rotation only: no pose correctives
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    head = load_flame(tmp_path / "m.pkl")
    rest = head.pose(motion())
    posed = head.pose(motion(jaw=(np.pi / 2, 0.0, 0.0)))
    moved = np.nonzero(np.linalg.norm(posed - rest, axis=1) > 1e-12)[0]
    np.testing.assert_array_equal(moved, np.nonzero(arrays["weights"][:, 2] > 0)[0])
    jaw = arrays["J_regressor"].toarray()[2] @ arrays["v_template"]
    rx90 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    v = arrays["v_template"][JAW_ONLY]
    np.testing.assert_allclose(posed[JAW_ONLY], (v - jaw) @ rx90.T + jaw, atol=1e-12)
    # half-weighted vertices land halfway between rest and the fully rotated position
    vb = arrays["v_template"][BLEND]
    np.testing.assert_allclose(posed[BLEND], 0.5 * vb + 0.5 * ((vb - jaw) @ rx90.T + jaw), atol=1e-12)


def test_head_rotation_turns_everything_about_the_root_joint(tmp_path):
    arrays = synthetic_arrays(posedirs=False)
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    head = load_flame(tmp_path / "m.pkl")
    rot = np.array([0.0, np.pi / 2, 0.0])
    root = arrays["J_regressor"].toarray()[0] @ arrays["v_template"]
    expected = (arrays["v_template"] - root) @ axis_angle_to_matrix(rot).T + root
    np.testing.assert_allclose(head.pose(motion(rot=rot)), expected, atol=1e-12)


def test_pose_correctives_follow_the_non_root_joints(tmp_path, arrays):
    """posedirs add (R_k - I) of joints 1-4 before skinning: a head rotation (root) adds none, the jaw does."""
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    head = load_flame(tmp_path / "m.pkl")
    rigid = synthetic_arrays(posedirs=False)
    rigid["v_template"], rigid["shapedirs"] = arrays["v_template"], arrays["shapedirs"]
    write_flame_pickle(tmp_path / "r.pkl", rigid)
    no_corr = load_flame(tmp_path / "r.pkl")
    m = motion(rot=(0.2, 0.3, 0.1))
    np.testing.assert_allclose(head.pose(m), no_corr.pose(m), atol=1e-12)
    jaw = np.array([0.4, 0.0, 0.0])
    feature = np.zeros(POSE_FEATURES)
    feature[9:18] = (axis_angle_to_matrix(jaw) - np.eye(3)).reshape(-1)  # joint 2 is the second of joints 1-4
    offset = arrays["posedirs"] @ feature  # (V, 3)
    m = motion(jaw=jaw)
    np.testing.assert_allclose(head.pose(m)[ROOT_ONLY], (arrays["v_template"] + offset)[ROOT_ONLY], atol=1e-12)


def test_batched_pose_equals_frame_by_frame(tmp_path, arrays):
    write_flame_pickle(tmp_path / "m.pkl", arrays)
    head = load_flame(tmp_path / "m.pkl")
    frames = RNG.normal(0.0, 0.3, (4, MOTION_DIM))
    np.testing.assert_allclose(head.pose(frames), np.stack([head.pose(f) for f in frames]), atol=1e-12)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, arrays):
    marker = tmp_path / "pwned"
    data = dict(arrays)
    data["v_template"] = _RunsCode(marker)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(FlameError, match="refused"):
        load_flame(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"v_template": eval}, protocol=2))  # any other callable
    with pytest.raises(FlameError, match="refused"):
        load_flame(path)


def test_missing_and_malformed_files_are_one_clear_error(tmp_path, arrays, monkeypatch):
    with pytest.raises(FlameError, match="not found"):
        load_flame(tmp_path / "nope.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"v_template": np.zeros((3, 3))}, protocol=2)[:20])
    with pytest.raises(FlameError, match="not a FLAME model pickle"):
        load_flame(tmp_path / "cut.pkl")
    partial = {k: v for k, v in arrays.items() if k != "posedirs"}
    write_flame_pickle(tmp_path / "partial.pkl", partial)
    with pytest.raises(FlameError, match="missing \\['posedirs'\\]"):
        load_flame(tmp_path / "partial.pkl")
    bad = dict(arrays)
    bad["weights"] = bad["weights"][:, :4]
    write_flame_pickle(tmp_path / "bad.pkl", bad)
    with pytest.raises(FlameError, match="weights has shape"):
        load_flame(tmp_path / "bad.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(FlameError, match="not a dict"):
        load_flame(tmp_path / "list.pkl")
    # the path comes from the argument, else TIMAR_FLAME, else none (the procedural head)
    monkeypatch.delenv("TIMAR_FLAME", raising=False)
    assert flame_path(None) is None and flame_path("") is None
    monkeypatch.setenv("TIMAR_FLAME", str(tmp_path / "x.pkl"))
    assert flame_path(None) == tmp_path / "x.pkl" and flame_path("y.npz") == Path("y.npz")
