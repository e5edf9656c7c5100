"""The procedural stylised head: what every user sees when no FLAME model is given.

Built for this project from ellipsoids on FLAME's five joints and posed by the same skinning code as FLAME
(`skinning.SkinnedHead`), so it moves exactly as a FLAME head would under the same 56-d frame:

- skull, nose and ears follow joint 0 (the global head rotation, pivoting at the neck below the head);
- the jaw, the lower front of the face below the lip line, follows joint 2: it swings down and back about
  a hinge below the ears by the jaw angle, opening a gap onto a dark mouth cavity;
- the eyes follow joints 3 and 4 (FLAME's eye joints; TIMAR's motion leaves them at rest).

Every vertex follows exactly one joint, so each part is rigid (`SkinnedHead.rigid_parts`). What it cannot
show: the 50 expression coefficients, which only FLAME's expression basis turns into a face (cheeks, lips,
brows); viewers draw them as curves instead. Sizes are metres, axes FLAME's (x across, y up, z forward).
"""

from __future__ import annotations

import numpy as np

from timar_model.view.skinning import N_JOINTS, SkinnedHead

SKULL_CENTER = np.array([0.0, 0.01, 0.0])
SKULL_RADII = np.array([0.078, 0.10, 0.092])
LIP_Y = -0.035  # the lip line: the jaw is the skull's front below it
JAW_BACK_Z = -0.005  # the jaw reaches back to this depth
JOINT_POSITIONS = np.array([
    [0.0, -0.115, -0.01],  # global: the neck pivot below the head
    [0.0, -0.07, -0.01],  # neck
    [0.0, -0.015, -0.01],  # jaw hinge, below the ears
    [0.032, 0.025, 0.071],  # left eye centre (on +x, the head's own left)
    [-0.032, 0.025, 0.071],  # right eye centre
])
EYE_RADIUS = 0.0135
MOUTH_LINING = 0.955  # the inner shell that lines the mouth, as a fraction of the skull
LINING_TOP = 0.0  # the lining reaches up to here

SKIN = (0.80, 0.82, 0.86)
LIPS = (0.62, 0.30, 0.30)
CAVITY = (0.16, 0.05, 0.06)
SCLERA = (0.96, 0.96, 0.94)
IRIS = (0.20, 0.32, 0.45)
PUPIL = (0.03, 0.03, 0.04)
NECK = (0.60, 0.62, 0.66)
BROWS = (0.30, 0.27, 0.26)


def ellipsoid(center: np.ndarray, radii: np.ndarray, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """A latitude-longitude ellipsoid: vertices ((n_lat + 1) * n_lon, 3) and faces (2 * n_lat * n_lon, 3),
    counter-clockwise seen from outside; longitude 0 faces +z. The pole rows hold coincident vertices (their
    triangles have no area)."""
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat + 1)[:, None]
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)[None, :]
    unit = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat) * np.ones_like(lon), np.cos(lat) * np.cos(lon)], -1)
    verts = (unit * radii + center).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    a = i * n_lon + j
    b = i * n_lon + (j + 1) % n_lon
    c = (i + 1) * n_lon + (j + 1) % n_lon
    d = (i + 1) * n_lon + j
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces


class _Builder:
    """Collects parts (vertices, faces, colours, joint, skin flag) into one mesh."""

    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.colors: list[np.ndarray] = []
        self.joint: list[np.ndarray] = []
        self.skin: list[np.ndarray] = []
        self.count = 0

    def add(self, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, joint: int, skin: np.ndarray) -> None:
        """Add the vertices that `faces` use (others are dropped), faces re-indexed."""
        used = np.unique(faces)
        remap = np.full(verts.shape[0], -1)
        remap[used] = np.arange(used.size) + self.count
        self.verts.append(verts[used])
        self.faces.append(remap[faces])
        self.colors.append(colors[used])
        self.joint.append(np.full(used.size, joint))
        self.skin.append(skin[used])
        self.count += used.size

    def head(self, name: str) -> SkinnedHead:
        joint = np.concatenate(self.joint)
        return SkinnedHead(
            name=name,
            template=np.concatenate(self.verts),
            faces=np.concatenate(self.faces),
            weights=np.eye(N_JOINTS)[joint],
            joints=JOINT_POSITIONS.copy(),
            colors=np.concatenate(self.colors),
            closed=True,
            skin=np.concatenate(self.skin),
        )


def _open_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) edges used by one face only (the border of a cut surface), each as (start, end) in its face's
    winding."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return edges[counts[inverse.reshape(-1)] == 1]


def _paint(n: int, rgb: tuple[float, float, float]) -> np.ndarray:
    return np.tile(np.array(rgb, dtype=np.float64), (n, 1))


def _taper(verts: np.ndarray) -> np.ndarray:
    """Narrow the lower half of the skull towards the chin (x shrinks by up to a fifth below the centre)."""
    below = np.clip((SKULL_CENTER[1] - verts[:, 1]) / SKULL_RADII[1], 0.0, 1.0)
    out = verts.copy()
    out[:, 0] *= 1.0 - 0.2 * below
    return out


def procedural_head(detail: float = 1.0) -> SkinnedHead:
    """The stylised head; `detail` scales the tessellation of skull and eyes (1: what the viewers draw; less:
    a lighter mesh, e.g. for a marker stream)."""
    if not 0.25 <= detail <= 4.0:
        raise ValueError(f"procedural_head: detail must be in [0.25, 4], got {detail}")

    def steps(n: int) -> int:
        return max(int(round(n * detail)), 6)

    b = _Builder()
    # skull + jaw: one tapered ellipsoid cut at the lip line; the front below it is the jaw. A dark inner shell
    # (faces turned inwards) lines the head, so an open jaw shows the inside of the mouth
    verts, faces = ellipsoid(SKULL_CENTER, SKULL_RADII, steps(40), steps(64))
    verts = _taper(verts)
    centroid = verts[faces].mean(axis=1)
    quads = faces.shape[0] // 2  # ellipsoid(): face q and face q + quads split one grid quad
    quad_centroid = (centroid[:quads] + centroid[quads:]) / 2
    jaw_quad = (quad_centroid[:, 1] < LIP_Y) & (quad_centroid[:, 2] > JAW_BACK_Z)
    is_jaw = np.concatenate([jaw_quad, jaw_quad])  # whole quads: the cut follows the grid lines
    colors = _paint(verts.shape[0], SKIN)
    lips = (np.abs(verts[:, 1] - LIP_Y) < 0.0055) & (verts[:, 2] > 0.05) & (np.abs(verts[:, 0]) < 0.026)
    colors[lips] = LIPS
    b.add(verts, faces[~is_jaw], colors, 0, ~lips)
    b.add(verts, faces[is_jaw], colors, 2, ~lips)
    inner = SKULL_CENTER + MOUTH_LINING * (verts - SKULL_CENTER)
    flipped = faces[:, ::-1]
    dark = _paint(verts.shape[0], CAVITY)
    none = np.zeros(verts.shape[0], bool)
    # the skull's lining covers the lower head (it stays put: no gap opens below an open jaw), closed above
    # by a cap facing down into the mouth
    lower = centroid[:, 1] < LINING_TOP
    b.add(inner, flipped[lower], dark, 0, none)
    ring = _open_edges(flipped[lower])
    hub = inner[np.unique(ring)].mean(axis=0)
    cap_verts = np.concatenate([inner, hub[None]])
    cap = np.column_stack([ring, np.full(len(ring), inner.shape[0])])
    normal = np.cross(cap_verts[cap[:, 1]] - cap_verts[cap[:, 0]], cap_verts[cap[:, 2]] - cap_verts[cap[:, 0]])
    cap[normal[:, 1] > 0] = cap[normal[:, 1] > 0][:, ::-1]
    b.add(cap_verts, cap, _paint(cap_verts.shape[0], CAVITY), 0, np.zeros(cap_verts.shape[0], bool))
    b.add(inner, flipped[is_jaw], dark, 2, none)  # the floor of the mouth, moving with the jaw
    # the cut edges of skull and jaw: walls from the outer surface to the lining, seen from both sides
    both = np.concatenate([verts, inner])
    wall_colors = _paint(both.shape[0], CAVITY)
    for part, joint in ((faces[~is_jaw], 0), (faces[is_jaw], 2)):
        a, c = _open_edges(part).T
        n = verts.shape[0]
        walls = np.concatenate([np.stack([a, c, c + n], 1), np.stack([a, c + n, a + n], 1)])
        b.add(both, np.concatenate([walls, walls[:, ::-1]]), wall_colors, joint, np.zeros(both.shape[0], bool))
    # eyes: white, an iris and a pupil at the front, on their own joints
    for joint in (3, 4):
        ev, ef = ellipsoid(JOINT_POSITIONS[joint], np.full(3, EYE_RADIUS), steps(12), steps(20))
        front = (ev[:, 2] - JOINT_POSITIONS[joint][2]) / EYE_RADIUS
        ecol = _paint(ev.shape[0], SCLERA)
        ecol[front > 0.62] = IRIS
        ecol[front > 0.88] = PUPIL
        b.add(ev, ef, ecol, joint, np.zeros(ev.shape[0], bool))
    # brows, nose and ears (the nose and ears make a turn of the head show in its outline)
    for side in (1.0, -1.0):
        bv, bf = ellipsoid(np.array([side * 0.033, 0.052, 0.079]), np.array([0.017, 0.0035, 0.007]), 6, 12)
        b.add(bv, bf, _paint(bv.shape[0], BROWS), 0, np.zeros(bv.shape[0], bool))
    nv, nf = ellipsoid(np.array([0.0, -0.006, 0.085]), np.array([0.011, 0.019, 0.017]), 10, 16)
    b.add(nv, nf, _paint(nv.shape[0], SKIN), 0, np.ones(nv.shape[0], bool))
    for side in (1.0, -1.0):
        av, af = ellipsoid(np.array([side * 0.076, 0.0, -0.008]), np.array([0.011, 0.026, 0.017]), 10, 16)
        b.add(av, af, _paint(av.shape[0], SKIN), 0, np.ones(av.shape[0], bool))
    # a neck down from the pivot, turning with the head
    nkv, nkf = ellipsoid(np.array([0.0, -0.137, -0.014]), np.array([0.036, 0.05, 0.036]), 12, 24)
    b.add(nkv, nkf, _paint(nkv.shape[0], NECK), 0, np.zeros(nkv.shape[0], bool))
    return b.head("procedural")
