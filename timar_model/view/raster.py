"""Software rendering of a posed head: a numpy z-buffer rasteriser with Lambert shading (no GPU, no OpenGL).

`HeadRenderer(head, camera).render(vertices)` -> (H, W, 3) uint8:

1. project the vertices through a pinhole `Camera` (pixel x right, y down, and 1 / depth);
2. for every triangle facing the camera (every triangle when the mesh is not closed), enumerate the pixel
   centres of its bounding box and keep those inside it (barycentric coordinates >= 0);
3. keep the nearest fragment per pixel: a 64-bit key (quantised 1 / depth, triangle index) through
   `np.minimum.at`, so the result does not depend on the order of the triangles;
4. shade: vertex normals from the posed triangles, Lambert light from a key and a fill light fixed to the
   camera plus ambient, per-vertex colours interpolated over each pixel's triangle (Gouraud), or one colour
   per triangle (`smooth=False`). Back faces of an open mesh (the inside of FLAME's mouth) are darkened.

Lengths are in the head's units (FLAME: metres); angles in degrees where the name says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from timar_model.view.skinning import SkinnedHead

KEY_LIGHT = (-0.45, 0.55, 0.70)  # camera space: from the upper left, in front
FILL_LIGHT = (0.60, 0.10, 0.80)
AMBIENT = 0.28
KEY_GAIN = 0.62
FILL_GAIN = 0.22
BACK_FACE_GAIN = 0.3  # back faces of an open mesh are this much darker
_DEPTH_BITS = 38
_FACE_BITS = 24
_EMPTY = np.iinfo(np.int64).max
_FAR = 1e9  # pixels: no bound


@dataclass
class Camera:
    """A pinhole camera orbiting `center` at `distance`: yaw about y (positive: from the head's left, +x),
    pitch about x (positive: from above); vertical field of view fov_deg; image width x height pixels."""

    width: int
    height: int
    center: np.ndarray
    distance: float
    fov_deg: float = 24.0
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    _basis: np.ndarray = field(init=False, repr=False)
    _eye: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"Camera: image must be at least 8 x 8 pixels, got {self.width} x {self.height}")
        if not (0 < self.fov_deg < 170 and self.distance > 0):
            raise ValueError(f"Camera: need 0 < fov_deg < 170 and distance > 0, got {self.fov_deg}, {self.distance}")
        yaw, pitch = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        back = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        self.center = np.asarray(self.center, dtype=np.float64)
        self._eye = self.center + self.distance * back
        forward = -back
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        self._basis = np.stack([right, up, forward])  # rows: camera x, y, viewing direction

    @classmethod
    def framing(cls, head: SkinnedHead, width: int, height: int, fov_deg: float = 24.0, yaw_deg: float = 0.0,
                pitch_deg: float = 0.0, margin: float = 1.12) -> Camera:
        """A camera whose view holds the head's rest bounding sphere (times `margin`)."""
        lo, hi = head.template.min(axis=0), head.template.max(axis=0)
        center = (lo + hi) / 2
        radius = float(np.linalg.norm(head.template - center, axis=1).max()) * margin
        half = math.radians(fov_deg) / 2 * min(1.0, width / height)
        return cls(width, height, center, radius / math.sin(half), fov_deg, yaw_deg, pitch_deg)

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return self.height / 2 / math.tan(math.radians(self.fov_deg) / 2)

    def to_camera(self, directions: np.ndarray) -> np.ndarray:
        """(..., 3) world directions -> camera axes (x right, y up, z along the view)."""
        return np.asarray(directions) @ self._basis.T

    def to_world(self, directions: np.ndarray) -> np.ndarray:
        """(..., 3) camera-axis directions -> world directions."""
        return np.asarray(directions) @ self._basis

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) float32 [pixel x, pixel y, 1 / depth]; pixel (0, 0) is the top-left
        pixel's corner. Points behind the camera get 1 / depth <= 0."""
        c = (np.asarray(points, dtype=np.float64) - self._eye) @ self._basis.T
        depth = c[:, 2]
        inv = np.where(depth > 1e-9, 1.0 / np.maximum(depth, 1e-9), 0.0)
        f = self.focal
        out = np.empty((c.shape[0], 3), dtype=np.float32)
        out[:, 0] = self.width / 2 + f * c[:, 0] * inv
        out[:, 1] = self.height / 2 - f * c[:, 1] * inv
        out[:, 2] = inv
        return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) vertices, (F, 3) faces -> (V, 3) unit normals (area-weighted sums of the face normals)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices, dtype=np.float64)
    n = vertices.shape[0]
    for c in range(3):
        vn[:, c] = sum(np.bincount(faces[:, k], weights=fn[:, c], minlength=n) for k in range(3))
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


@dataclass
class Fragments:
    """The visible surface of one rendered image: for each covered pixel its flat index and triangle.

    `coef` (S, 12) holds, for each rasterised triangle s (mesh face `selected[s]`), the screen-space planes
    a x + b y + c of its three barycentric coordinates and of 1 / depth, as [a0 b0 c0 a1 b1 c1 a2 b2 c2 aq bq
    cq] (x, y: pixel-centre coordinates); `local` indexes them per pixel."""

    pixels: np.ndarray  # (N,) int64 flat pixel index (y * width + x)
    local: np.ndarray  # (N,) int64 index into selected / coef
    selected: np.ndarray  # (S,) int64 mesh face of each rasterised triangle
    coef: np.ndarray  # (S, 12) float64 planes
    back: np.ndarray  # (S,) bool: the triangle faces away from the camera
    width: int

    @property
    def faces(self) -> np.ndarray:
        """(N,) mesh face seen at each pixel."""
        return self.selected[self.local]

    def bary(self) -> np.ndarray:
        """(N, 3) barycentric coordinates of each pixel centre in its triangle."""
        k = self.coef[self.local]
        cy, cx = np.divmod(self.pixels, self.width)
        cx, cy = cx + 0.5, cy + 0.5
        w = [k[:, 3 * i] * cx + k[:, 3 * i + 1] * cy + k[:, 3 * i + 2] for i in range(3)]
        return np.clip(np.stack(w, axis=1), 0.0, 1.0)


def rasterize(screen: np.ndarray, faces: np.ndarray, width: int, height: int, cull: bool,
              zbuf: np.ndarray | None = None) -> Fragments:
    """Visible triangle per pixel. screen (V, 3) from Camera.project; faces (F, 3) counter-clockwise from
    outside. cull: skip triangles facing away (a closed mesh never shows them). zbuf: a (width * height,)
    int64 scratch buffer to reuse between calls.

    Scanline form: for every pixel row a triangle spans, its three edge equations give the span of pixel
    centres inside it; every pixel of every span is one fragment, nearest fragment per pixel wins."""
    tri = screen[faces].astype(np.float64)  # (F, 3, 3); float64: the edge planes cancel large products
    x0, y0, q0 = tri[:, 0, 0], tri[:, 0, 1], tri[:, 0, 2]
    x1, y1, q1 = tri[:, 1, 0], tri[:, 1, 1], tri[:, 1, 2]
    x2, y2, q2 = tri[:, 2, 0], tri[:, 2, 1], tri[:, 2, 2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)  # < 0: counter-clockwise on screen (y down) = front
    keep = (np.abs(area) > 1e-6) & (q0 > 0) & (q1 > 0) & (q2 > 0)
    if cull:
        keep &= area < 0
    ys = tri[:, :, 1]
    by0 = np.maximum(np.ceil(ys.min(axis=1) - 0.5), 0).astype(np.int64)
    by1 = np.minimum(np.floor(ys.max(axis=1) - 0.5), height - 1).astype(np.int64)
    keep &= by1 >= by0
    sel = np.nonzero(keep)[0]
    empty = Fragments(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 12)),
                      np.zeros(0, bool), width)
    if sel.size == 0:
        return empty
    # barycentric w_i = a_i x + b_i y + c_i and inverse depth q = aq x + bq y + cq per triangle
    inv = 1.0 / area[sel]
    a0, b0, c0 = (y1 - y2)[sel] * inv, (x2 - x1)[sel] * inv, (x1 * y2 - x2 * y1)[sel] * inv
    a1, b1, c1 = (y2 - y0)[sel] * inv, (x0 - x2)[sel] * inv, (x2 * y0 - x0 * y2)[sel] * inv
    dq0, dq1, q2s = (q0 - q2)[sel], (q1 - q2)[sel], q2[sel]
    coef = np.stack([a0, b0, c0, a1, b1, c1, -(a0 + a1), -(b0 + b1), 1.0 - (c0 + c1),
                     a0 * dq0 + a1 * dq1, b0 * dq0 + b1 * dq1, c0 * dq0 + c1 * dq1 + q2s], axis=1).astype(np.float64)
    # each edge bounds a row's span from the left (a > 0: x >= t) or the right (a < 0: x <= t), with
    # t = -(b y + c) / a = m y + n; a horizontal edge (a = 0) bounds none of the rows the triangle spans.
    # Per triangle: [m, n] of the left bound and of the right bound of each edge (no bound: 0 y -+ _FAR),
    # then the 1 / depth plane
    rowcoef = np.empty((15, sel.size))  # one row per coefficient: gathers per pixel row stay contiguous
    for e in range(3):
        a, b, c = coef[:, 3 * e], coef[:, 3 * e + 1], coef[:, 3 * e + 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            m, n = -b / a, -c / a
        left, right = a > 0, a < 0
        rowcoef[4 * e] = np.where(left, m, 0.0)
        rowcoef[4 * e + 1] = np.where(left, n, -_FAR)
        rowcoef[4 * e + 2] = np.where(right, m, 0.0)
        rowcoef[4 * e + 3] = np.where(right, n, _FAR)
    rowcoef[12:] = coef[:, 9:].T
    # one entry per (triangle, pixel row)
    n_rows = by1[sel] - by0[sel] + 1
    row_tri = np.repeat(np.arange(sel.size), n_rows)
    row_y = np.arange(row_tri.size) + np.repeat(by0[sel] - (np.cumsum(n_rows) - n_rows), n_rows)
    k = rowcoef.take(row_tri, axis=1)
    cy = row_y + 0.5
    lo = np.maximum(np.maximum(k[0] * cy + k[1], k[4] * cy + k[5]), k[8] * cy + k[9])
    hi = np.minimum(np.minimum(k[2] * cy + k[3], k[6] * cy + k[7]), k[10] * cy + k[11])
    eps = 1e-4  # a pixel centre on an edge shared by two triangles belongs to both, never to neither
    xs = np.maximum(np.ceil(lo - 0.5 - eps), 0).astype(np.int64)
    xe = np.minimum(np.floor(hi - 0.5 + eps), width - 1).astype(np.int64)
    n = np.maximum(xe - xs + 1, 0)
    total = int(n.sum())
    if total == 0:
        return empty
    first = np.cumsum(n) - n  # index of each row's first fragment
    ramp = np.arange(total)
    pix = ramp + np.repeat(row_y * width + xs - first, n)
    local = np.repeat(row_tri, n)
    aq = k[12]
    q_row = (aq * (xs - first + 0.5) + k[13] * cy + k[14]).astype(np.float32)
    q = ramp.astype(np.float32) * np.repeat(aq.astype(np.float32), n) + np.repeat(q_row, n)
    lo_q, hi_q = float(q.min()), float(q.max())
    scale = ((1 << _DEPTH_BITS) - 1) / max(hi_q - lo_q, 1e-12)
    key = (((hi_q - q) * scale).astype(np.int64) << _FACE_BITS) | local  # smaller = nearer
    if zbuf is None or zbuf.size != width * height:
        zbuf = np.empty(width * height, dtype=np.int64)
    zbuf.fill(_EMPTY)
    np.minimum.at(zbuf, pix, key)
    pixels = np.nonzero(zbuf != _EMPTY)[0]
    return Fragments(pixels, zbuf[pixels] & ((1 << _FACE_BITS) - 1), sel, coef, area[sel] > 0, width)


class HeadRenderer:
    """Renders one SkinnedHead through one Camera: render(vertices) or render_motion(motion56)."""

    def __init__(self, head: SkinnedHead, camera: Camera, background: tuple[int, int, int] = (250, 250, 252),
                 smooth: bool = True) -> None:
        self.head = head
        self.camera = camera
        self.background = np.array(background, dtype=np.uint8)
        self.smooth = smooth
        self.faces = np.ascontiguousarray(head.faces, dtype=np.int64)
        lights = np.array([KEY_LIGHT, FILL_LIGHT], dtype=np.float64)
        lights /= np.linalg.norm(lights, axis=1, keepdims=True)
        # camera axes (x right, y up, z along the view) -> world; lights point from the surface to the light
        cam_to_world = camera.to_world(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]))
        self.lights = lights @ cam_to_world
        self.gains = np.array([KEY_GAIN, FILL_GAIN])
        self._zbuf = np.empty(camera.width * camera.height, dtype=np.int64)
        pixel = np.arange(camera.width * camera.height)
        self._cx = (pixel % camera.width + 0.5).astype(np.float32)  # pixel centres by flat index
        self._cy = (pixel // camera.width + 0.5).astype(np.float32)

    def shade(self, normals: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """(N, 3) unit normals, (N, 3) albedo -> (N, 3) Lambert-lit colour in [0, 1]."""
        light = AMBIENT + np.maximum(normals @ self.lights.T, 0.0) @ self.gains
        return np.clip(colors * light[:, None], 0.0, 1.0)

    def render(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) posed vertices -> (H, W, 3) uint8 image."""
        cam = self.camera
        frags = rasterize(cam.project(vertices), self.faces, cam.width, cam.height, self.head.closed, self._zbuf)
        image = np.empty((cam.height * cam.width, 3), dtype=np.uint8)
        image[:] = self.background
        if frags.pixels.size == 0:
            return image.reshape(cam.height, cam.width, 3)
        faces = self.faces[frags.selected]  # (S, 3)
        gain = np.where(frags.back, BACK_FACE_GAIN, 1.0)[:, None]
        if self.smooth:
            lit = self.shade(vertex_normals(vertices, self.faces), self.head.colors)
            corner = lit[faces] * (255.0 * gain[:, :, None])  # (S, 3 corners, 3 channels), 0-255
            k = frags.coef
            # colour = sum_i w_i C_i is itself a plane per channel: x coefficients, y coefficients, constants
            planes = np.stack([np.einsum("sk,skc->cs", k[:, j:9:3], corner) for j in range(3)])  # (3, 3, S)
            planes[2] += 0.5  # round to the nearest level
            p = planes.reshape(9, -1).astype(np.float32).take(frags.local, axis=1)  # (9, N)
            cx, cy = self._cx.take(frags.pixels), self._cy.take(frags.pixels)
            color = np.empty((frags.pixels.size, 3), dtype=np.uint8)
            for c in range(3):
                color[:, c] = np.clip(p[c] * cx + p[3 + c] * cy + p[6 + c], 0.0, 255.0)
        else:
            tri = vertices[faces]
            fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
            lit = self.shade(fn, self.head.colors[faces].mean(axis=1)) * gain
            color = (np.clip(lit * 255.0 + 0.5, 0.0, 255.0)).astype(np.uint8).take(frags.local, axis=0)
        image[frags.pixels] = color
        return image.reshape(cam.height, cam.width, 3)

    def render_motion(self, motion: np.ndarray) -> np.ndarray:
        """(56,) motion frame -> (H, W, 3) uint8 image of the posed head."""
        return self.render(self.head.pose(motion))
