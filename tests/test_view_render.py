"""The software renderer: triangles land where they should, and the rendered head changes where it should
(the mouth when the jaw opens, the outline when the head turns, nothing when the input is still)."""

from __future__ import annotations

import numpy as np
import pytest

from timar_model.motion import HEAD_ROT, JAW, MOTION_DIM
from timar_model.view.procedural import procedural_head
from timar_model.view.raster import Camera, HeadRenderer, rasterize
from timar_model.view.skinning import JOINTS

SIZE = 160
BACKGROUND = (0, 255, 0)  # a colour the head never has


@pytest.fixture(scope="module")
def head():
    return procedural_head()


@pytest.fixture(scope="module")
def renderer(head):
    return HeadRenderer(head, Camera.framing(head, SIZE, SIZE, yaw_deg=-14.0, pitch_deg=6.0), background=BACKGROUND)


def motion(jaw: float = 0.0, rot=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.zeros(MOTION_DIM)
    m[JAW.start] = jaw
    m[HEAD_ROT] = rot
    return m


def foreground(image: np.ndarray) -> np.ndarray:
    return ~np.all(image == BACKGROUND, axis=-1)


def test_two_triangles_cover_a_square_without_gaps_and_the_nearer_wins():
    # a 10 x 10 pixel square from (2, 2) to (12, 12) split along its diagonal, plus a nearer triangle over part
    # of it listed first: the z-buffer, not the order, decides
    screen = np.array([[2, 2, 1.0], [12, 2, 1.0], [12, 12, 1.0], [2, 12, 1.0],
                       [0, 0, 2.0], [8, 0, 2.0], [0, 8, 2.0]], dtype=np.float32)  # 1 / depth: larger = nearer
    faces = np.array([[4, 6, 5], [0, 2, 1], [0, 3, 2]])  # counter-clockwise on screen (y down) = front
    frags = rasterize(screen, faces, 16, 16, cull=True)
    owner = np.full(16 * 16, -1)
    owner[frags.pixels] = frags.faces
    owner = owner.reshape(16, 16)
    square = np.zeros((16, 16), bool)
    square[2:12, 2:12] = True
    near = np.add.outer(np.arange(16), np.arange(16)) + 1 <= 8  # pixel centres inside the near triangle
    assert np.all(owner[square & ~near] >= 1)  # no gap along the shared diagonal
    assert np.all(owner[near] == 0)
    assert np.all(owner[~square & ~near] == -1)
    # turned away: culled
    assert rasterize(screen, faces[:, ::-1], 16, 16, cull=True).pixels.size == 0


def test_still_input_renders_the_same_image(renderer):
    m = motion(0.2, (0.1, -0.2, 0.05))
    a, b = renderer.render_motion(m), renderer.render_motion(m.copy())
    np.testing.assert_array_equal(a, b)
    assert foreground(a).mean() > 0.2  # the head fills a good part of the view


def _jaw_box(head, renderer, poses: list[np.ndarray], margin: int = 2) -> tuple[slice, slice]:
    """Pixel box around the jaw's vertices (joint 2) in all `poses`."""
    jaw = np.argmax(head.weights, axis=1) == JOINTS.index("jaw")
    pts = np.concatenate([renderer.camera.project(head.pose(m)[jaw]) for m in poses])
    x0, y0 = np.floor(pts[:, :2].min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(pts[:, :2].max(axis=0)).astype(int) + margin
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def test_opening_the_jaw_changes_the_mouth_region_only(head, renderer):
    closed, open_ = motion(0.0), motion(0.35)
    a, b = renderer.render_motion(closed), renderer.render_motion(open_)
    changed = np.any(a != b, axis=-1)
    assert changed.sum() > 200  # the mouth opens visibly
    box = np.zeros_like(changed)
    box[_jaw_box(head, renderer, [closed, open_])] = True
    assert not np.any(changed & ~box), "pixels outside the jaw's reach changed"
    # the open mouth shows its dark inside
    dark = np.all(b < 90, axis=-1) & box & ~np.all(b == BACKGROUND, axis=-1)
    assert dark.sum() > np.all(a < 90, axis=-1)[box].sum() + 100


def test_turning_the_head_changes_its_outline(renderer):
    a = foreground(renderer.render_motion(motion()))
    b = foreground(renderer.render_motion(motion(rot=(0.0, 0.5, 0.0))))
    assert (a ^ b).sum() > 0.02 * a.sum()
    # a nod moves the outline too
    c = foreground(renderer.render_motion(motion(rot=(0.35, 0.0, 0.0))))
    assert (a ^ c).sum() > 0.02 * a.sum()


def test_rigid_parts_move_by_their_joint_transforms(head):
    """What the Rerun recording logs (a transform per rigid part) is what the skinning computes."""
    parts = head.rigid_parts()
    assert parts is not None and {JOINTS[j] for j, _ in parts} == {"global", "jaw", "eye_left", "eye_right"}
    m = motion(0.3, (0.2, -0.4, 0.1))
    posed = head.pose(m)
    g = head.joint_transforms(m)
    for joint, verts in parts:
        moved = head.template[verts] @ g[joint, :3, :3].T + g[joint, :3, 3]
        np.testing.assert_allclose(moved, posed[verts], atol=1e-12)


def test_the_procedural_head_is_closed_with_outward_faces(head):
    """Every outer surface winds counter-clockwise seen from outside, so culling never removes a visible face:
    the head, seen from anywhere around it, has no hole."""
    rng = np.random.default_rng(3)
    for _ in range(6):
        cam = Camera.framing(head, 128, 128, yaw_deg=float(rng.uniform(-180, 180)),
                             pitch_deg=float(rng.uniform(-60, 60)))
        img = HeadRenderer(head, cam, background=BACKGROUND).render_motion(motion())
        bg = np.all(img == BACKGROUND, axis=-1)
        inner = bg[1:-1, 1:-1]
        holes = inner & ~bg[:-2, 1:-1] & ~bg[2:, 1:-1] & ~bg[1:-1, :-2] & ~bg[1:-1, 2:]
        assert holes.sum() <= 2, f"{holes.sum()} pixel holes"
