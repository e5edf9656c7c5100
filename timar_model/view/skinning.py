"""A skinned head mesh posed by a 56-d motion frame: FLAME's linear blend skinning in numpy.

Both heads of the viewer are a `SkinnedHead`: the user's own FLAME model (`flame.py`) and the procedural
stylised head (`procedural.py`). Both have FLAME's five joints in FLAME's kinematic tree

    0 global (the neck pivot; parent: none)   1 neck (parent 0)   2 jaw (parent 1)
    3 left eye (parent 1)                      4 right eye (parent 1)

and are posed the way FLAME is (Li et al. 2017; the same steps as the public FLAME and SMPL-X code):

    v_shaped = template + exp_basis . exp                                   (V, 3)
    J        = joint_regressor @ v_shaped  (or the fixed rest joints)        (5, 3)
    R_k      = Rodrigues(pose_k), pose = [head rotation | 0 | jaw | 0 | 0]   (5, 3, 3)
    v_posed  = v_shaped + posedirs . (R_1..4 - I)                           (V, 3)
    G_k      = world transform of joint k along the tree, with its rest position taken out  (5, 4, 4)
    v        = sum_k weights[:, k] G_k v_posed                              (V, 3)

Units are the model's (FLAME: metres). Axes are FLAME's: x across the face, y up, z out of the face.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from timar_model.motion import EXP, EXP_DIM, HEAD_ROT, JAW, MOTION_DIM
from timar_model.runtime.robot_head import axis_angle_to_matrix

JOINTS = ("global", "neck", "jaw", "eye_left", "eye_right")
PARENTS = np.array([-1, 0, 1, 1, 1])  # FLAME's kinematic tree
N_JOINTS = len(JOINTS)
POSE_FEATURES = (N_JOINTS - 1) * 9  # (R - I) of every joint but the root, row-major


@dataclass
class SkinnedHead:
    """A head mesh with FLAME's joints, blend shapes and skinning weights.

    template (V, 3) rest vertices; faces (F, 3) vertex indices, counter-clockwise seen from outside;
    weights (V, 5) skinning weights per joint (rows sum to 1); parents (5,) the kinematic tree;
    joints (5, 3) rest joint positions, used when joint_regressor is None, else joint_regressor (5, V)
    regresses them from the shaped vertices; exp_basis (V, 3, E) expression blend shapes (E >= 50; None when
    the head has none: the procedural head); posedirs (V * 3, 36) pose-corrective blend shapes or None;
    colors (V, 3) float RGB in [0, 1]; closed: the surface has no holes, so faces turned away from the
    camera are never seen (a renderer may skip them); skin (V,) bool marks the vertices a role colour
    replaces (None: all of them).
    """

    name: str
    template: np.ndarray
    faces: np.ndarray
    weights: np.ndarray
    joints: np.ndarray
    colors: np.ndarray
    parents: np.ndarray = field(default_factory=lambda: PARENTS.copy())
    joint_regressor: np.ndarray | None = None
    exp_basis: np.ndarray | None = None
    posedirs: np.ndarray | None = None
    closed: bool = False
    skin: np.ndarray | None = None

    def __post_init__(self) -> None:
        v = self.template.shape[0]
        checks = [
            (self.template.shape == (v, 3), f"template must be (V, 3), got {self.template.shape}"),
            (self.faces.ndim == 2 and self.faces.shape[1] == 3, f"faces must be (F, 3), got {self.faces.shape}"),
            (self.faces.size == 0 or (0 <= self.faces.min() and self.faces.max() < v),
             "faces index vertices that do not exist"),
            (self.weights.shape == (v, N_JOINTS), f"weights must be ({v}, {N_JOINTS}), got {self.weights.shape}"),
            (self.joints.shape == (N_JOINTS, 3), f"joints must be ({N_JOINTS}, 3), got {self.joints.shape}"),
            (self.colors.shape == (v, 3), f"colors must be ({v}, 3), got {self.colors.shape}"),
            (self.parents.shape == (N_JOINTS,) and self.parents[0] < 0
             and all(0 <= p < k for k, p in enumerate(self.parents[1:], 1)),
             f"parents must list each joint's parent before it, root first, got {self.parents}"),
            (self.joint_regressor is None or self.joint_regressor.shape == (N_JOINTS, v),
             f"joint_regressor must be ({N_JOINTS}, {v})"),
            (self.exp_basis is None or (self.exp_basis.ndim == 3 and self.exp_basis.shape[:2] == (v, 3)
                                        and self.exp_basis.shape[2] >= EXP_DIM),
             f"exp_basis must be ({v}, 3, >= {EXP_DIM})"),
            (self.posedirs is None or self.posedirs.shape == (v * 3, POSE_FEATURES),
             f"posedirs must be ({v * 3}, {POSE_FEATURES})"),
            (self.skin is None or self.skin.shape == (v,), f"skin must be ({v},)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"head {self.name!r}: {message}")
        if self.exp_basis is not None:
            self.exp_basis = np.ascontiguousarray(self.exp_basis[:, :, :EXP_DIM])
            self._exp_flat = self.exp_basis.reshape(v * 3, EXP_DIM)

    @property
    def num_vertices(self) -> int:
        return int(self.template.shape[0])

    def recolored(self, rgb: tuple[float, float, float]) -> SkinnedHead:
        """A copy whose skin vertices have colour `rgb` (0-1), sharing every other array."""
        colors = self.colors.copy()
        colors[slice(None) if self.skin is None else self.skin] = rgb
        return replace(self, colors=colors)

    def rigid_parts(self) -> list[tuple[int, np.ndarray]] | None:
        """When every vertex follows one joint only: [(joint, vertex indices)] per joint that has vertices
        (the pose is then one rigid transform per part); None when any vertex blends joints."""
        owner = np.argmax(self.weights, axis=1)
        if not np.allclose(self.weights[np.arange(self.num_vertices), owner], 1.0):
            return None
        return [(k, np.nonzero(owner == k)[0]) for k in range(N_JOINTS) if np.any(owner == k)]

    # ------------------------------------------------------------------ posing
    def shaped(self, motion: np.ndarray) -> np.ndarray:
        """(..., 56) motion -> (..., V, 3) template plus expression blend shapes."""
        m = np.asarray(motion, dtype=np.float64)
        out = np.broadcast_to(self.template, m.shape[:-1] + self.template.shape).astype(np.float64)
        if self.exp_basis is None:
            return out
        return out + (m[..., EXP] @ self._exp_flat.T).reshape(m.shape[:-1] + (self.num_vertices, 3))

    def rest_joints(self, shaped: np.ndarray) -> np.ndarray:
        """(..., V, 3) shaped vertices -> (..., 5, 3) rest joint positions."""
        if self.joint_regressor is None:
            return np.broadcast_to(self.joints, shaped.shape[:-2] + self.joints.shape).astype(np.float64)
        return self.joint_regressor @ shaped

    def joint_transforms(self, motion: np.ndarray) -> np.ndarray:
        """(..., 56) motion -> (..., 5, 4, 4) transforms G_k that take a rest-pose point skinned to joint k to
        its posed position."""
        m = np.asarray(motion, dtype=np.float64)
        if self.joint_regressor is None:
            rest = np.broadcast_to(self.joints, m.shape[:-1] + self.joints.shape)
        else:
            rest = self.rest_joints(self.shaped(m))
        return chain_transforms(rotations(m), rest, self.parents)

    def pose(self, motion: np.ndarray) -> np.ndarray:
        """(..., 56) motion -> (..., V, 3) posed vertices (linear blend skinning)."""
        m = np.asarray(motion, dtype=np.float64)
        if m.shape[-1] != MOTION_DIM:
            raise ValueError(f"pose: expected (..., {MOTION_DIM}) motion, got {m.shape}")
        shaped = self.shaped(m)
        rot = rotations(m)
        posed = shaped
        if self.posedirs is not None:
            feature = (rot[..., 1:, :, :] - np.eye(3)).reshape(m.shape[:-1] + (POSE_FEATURES,))
            posed = shaped + (feature @ self.posedirs.T).reshape(shaped.shape)
        g = chain_transforms(rot, self.rest_joints(shaped), self.parents)  # (..., 5, 4, 4)
        blended = np.einsum("vk,...kij->...vij", self.weights, g[..., :3, :])  # (..., V, 3, 4)
        return np.einsum("...vij,...vj->...vi", blended[..., :3], posed) + blended[..., 3]


def full_pose(motion: np.ndarray) -> np.ndarray:
    """(..., 56) motion -> (..., 5, 3) axis-angle per joint: [head rotation, neck 0, jaw, eyes 0]."""
    m = np.asarray(motion, dtype=np.float64)
    pose = np.zeros(m.shape[:-1] + (N_JOINTS, 3))
    pose[..., 0, :] = m[..., HEAD_ROT]
    pose[..., 2, :] = m[..., JAW]
    return pose


def rotations(motion: np.ndarray) -> np.ndarray:
    """(..., 56) motion -> (..., 5, 3, 3) rotation matrix of each joint."""
    return axis_angle_to_matrix(full_pose(motion))


def chain_transforms(rot: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Local rotations (..., K, 3, 3) about rest joints (..., K, 3) -> (..., K, 4, 4) skinning transforms.

    The world transform W_k of joint k is its parent's times [R_k | j_k - j_parent] (the root's: [R_0 | j_0]);
    G_k p = W_k (p - j_k), i.e. the rest pose's offset from joint k turned by the joint's world rotation and
    put at its posed position: G_k maps rest-pose points to posed ones."""
    lead = rot.shape[:-3]
    k_count = rot.shape[-3]
    local = np.zeros(lead + (k_count, 4, 4))
    local[..., :3, :3] = rot
    rel = np.array(joints, dtype=np.float64)
    rel[..., 1:, :] -= joints[..., parents[1:], :]
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    world = [local[..., 0, :, :]]
    for k in range(1, k_count):
        world.append(world[parents[k]] @ local[..., k, :, :])
    g = np.stack(world, axis=-3)
    g[..., :3, 3] -= np.einsum("...kij,...kj->...ki", g[..., :3, :3], joints)
    return g
