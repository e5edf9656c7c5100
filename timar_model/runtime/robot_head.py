"""Pure math of the head bridge: FLAME motion -> neck (yaw, pitch, roll) + jaw joint commands within limits.

FLAME axes: x across the face, y up, z out of the face. The global head rotation
(axis-angle) is decomposed as R = Ry(yaw) @ Rx(pitch) @ Rz(roll); the jaw opening is the rotation of the jaw
pose about x. Each robot joint takes one of those four angles through sign * gain * angle + offset, then a
`RateLimiter` enforces position, velocity and acceleration limits: commands never exceed them, also when the
input is NaN (the last valid target is held and counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from timar_model.motion import HEAD_ROT, JAW, MOTION_DIM

SOURCES = ("yaw", "pitch", "roll", "jaw")


# ------------------------------------------------------------------ rotations
def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrix (Rodrigues)."""
    r = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)  # (..., 1)
    k = np.where(theta > 1e-12, r / np.maximum(theta, 1e-12), 0.0)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    K = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], axis=-1).reshape(*r.shape[:-1], 3, 3)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def matrix_to_yaw_pitch_roll(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) [yaw about y, pitch about x, roll about z] with R = Ry @ Rx @ Rz."""
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.stack([yaw, pitch, roll], axis=-1)


def quaternion_to_axis_angle(q_xyzw: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion [x, y, z, w] (ROS order) -> (..., 3) axis-angle."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-9) or not np.all(np.isfinite(q)):
        raise ValueError("quaternion_to_axis_angle: zero-length or non-finite quaternion")
    q = q / n
    q = np.where(q[..., 3:4] < 0, -q, q)  # shortest rotation
    v, w = q[..., :3], q[..., 3:4]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, w)
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)  # small-angle limit: 2 v
    return v * scale


def axis_angle_to_quaternion(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 4) quaternion [x, y, z, w]."""
    r = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    half = theta / 2
    k = np.where(theta > 1e-12, np.sin(half) / np.maximum(theta, 1e-12), 0.5)
    return np.concatenate([r * k, np.cos(half)], axis=-1)


def head_angles(motion56: np.ndarray) -> np.ndarray:
    """(..., 56) motion -> (..., 4) [yaw, pitch, roll, jaw opening] in radians."""
    m = np.asarray(motion56, dtype=np.float64)
    if m.shape[-1] != MOTION_DIM:
        raise ValueError(f"head_angles: expected (..., {MOTION_DIM}) motion, got {m.shape}")
    ypr = matrix_to_yaw_pitch_roll(axis_angle_to_matrix(m[..., HEAD_ROT]))
    Rj = axis_angle_to_matrix(m[..., JAW])
    jaw = np.arctan2(Rj[..., 2, 1], Rj[..., 2, 2])  # rotation about x
    return np.concatenate([ypr, jaw[..., None]], axis=-1)


# ------------------------------------------------------------------ joints
@dataclass
class JointLimits:
    lower: float  # rad
    upper: float
    max_velocity: float  # rad/s
    max_acceleration: float  # rad/s^2

    def __post_init__(self) -> None:
        vals = (self.lower, self.upper, self.max_velocity, self.max_acceleration)
        if not all(np.isfinite(v) for v in vals):
            raise ValueError(f"JointLimits: all limits must be finite, got {vals}")
        if not self.lower < self.upper:
            raise ValueError(f"JointLimits: lower ({self.lower}) must be < upper ({self.upper})")
        if self.max_velocity <= 0 or self.max_acceleration <= 0:
            raise ValueError("JointLimits: max_velocity and max_acceleration must be > 0")


@dataclass
class JointMapping:
    name: str
    source: str  # one of SOURCES
    sign: float = 1.0
    gain: float = 1.0
    offset: float = 0.0  # rad
    limits: JointLimits = field(default_factory=lambda: JointLimits(-0.6, 0.6, 2.0, 20.0))

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"JointMapping {self.name!r}: source must be in {SOURCES}, not {self.source!r}")


def default_head_mapping() -> list[JointMapping]:
    return [
        JointMapping("neck_yaw", "yaw", limits=JointLimits(-0.8, 0.8, 2.0, 20.0)),
        JointMapping("neck_pitch", "pitch", limits=JointLimits(-0.5, 0.5, 2.0, 20.0)),
        JointMapping("neck_roll", "roll", limits=JointLimits(-0.4, 0.4, 1.5, 15.0)),
        JointMapping("jaw", "jaw", gain=1.0, limits=JointLimits(0.0, 0.45, 4.0, 60.0)),
    ]


class HeadJointMapper:
    """FLAME motion frames -> raw (unlimited) joint targets."""

    def __init__(self, joints: list[JointMapping] | None = None) -> None:
        self.joints = joints or default_head_mapping()
        names = [j.name for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"HeadJointMapper: duplicate joint names {names}")
        self._src = np.array([SOURCES.index(j.source) for j in self.joints])
        self._a = np.array([j.sign * j.gain for j in self.joints])
        self._b = np.array([j.offset for j in self.joints])

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def limits(self) -> list[JointLimits]:
        return [j.limits for j in self.joints]

    def targets(self, motion56: np.ndarray) -> np.ndarray:
        """(..., 56) -> (..., J) joint targets before limiting (NaN input gives NaN targets)."""
        return head_angles(motion56)[..., self._src] * self._a + self._b


@dataclass
class LimiterState:
    position: np.ndarray  # (J,)
    velocity: np.ndarray  # (J,)
    acceleration: np.ndarray  # (J,)


class RateLimiter:
    """Follows targets as fast as the limits allow and never exceeds them.

    Discrete-time with step dt: v_k = (p_k - p_{k-1}) / dt and a_k = (v_k - v_{k-1}) / dt satisfy
    |v_k| <= max_velocity, |a_k| <= max_acceleration, lower <= p_k <= upper. The velocity towards a limit
    is also capped so that braking at max_acceleration always stops before it:
    v dt + v^2 / (2 a) <= distance to the limit, which keeps every later step feasible.
    """

    def __init__(self, limits: list[JointLimits]) -> None:
        if not limits:
            raise ValueError("RateLimiter: needs at least one joint")
        self.lower = np.array([lim.lower for lim in limits])
        self.upper = np.array([lim.upper for lim in limits])
        self.vmax = np.array([lim.max_velocity for lim in limits])
        self.amax = np.array([lim.max_acceleration for lim in limits])
        self.nan_inputs = 0  # targets that were NaN/inf and replaced by the last valid target
        self.clamped = 0  # targets outside [lower, upper]
        self.state: LimiterState | None = None
        self._last_target: np.ndarray | None = None

    def reset(self, position: np.ndarray | None = None) -> None:
        self.state = None
        self._last_target = None
        if position is not None:
            p = np.clip(np.asarray(position, dtype=np.float64), self.lower, self.upper)
            self.state = LimiterState(p, np.zeros_like(p), np.zeros_like(p))
            self._last_target = p.copy()

    def step(self, target: np.ndarray, dt: float) -> LimiterState:
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"RateLimiter.step: dt must be a positive finite number, got {dt}")
        x = np.asarray(target, dtype=np.float64).reshape(-1).copy()
        if x.size != self.lower.size:
            raise ValueError(f"RateLimiter.step: expected {self.lower.size} targets, got {x.size}")
        bad = ~np.isfinite(x)
        if bad.any():
            self.nan_inputs += int(bad.sum())
            hold = self._last_target if self._last_target is not None else (self.lower + self.upper) / 2
            x[bad] = hold[bad]
        self._last_target = x.copy()
        outside = (x < self.lower) | (x > self.upper)
        self.clamped += int(outside.sum())
        x = np.clip(x, self.lower, self.upper)
        if self.state is None:  # first command: start at rest at the (clipped) target
            self.state = LimiterState(x.copy(), np.zeros_like(x), np.zeros_like(x))
            return self.state
        p, v = self.state.position, self.state.velocity
        a = self.amax
        # largest speeds towards the upper / lower limit that can still stop in time
        d_up, d_lo = np.maximum(self.upper - p, 0.0), np.maximum(p - self.lower, 0.0)
        v_up = a * (-dt + np.sqrt(dt * dt + 2 * d_up / a))
        v_lo = a * (-dt + np.sqrt(dt * dt + 2 * d_lo / a))
        hi = np.minimum.reduce([v + a * dt, self.vmax, v_up])
        lo = np.maximum.reduce([v - a * dt, -self.vmax, -v_lo])
        brake = v - np.clip(v, -a * dt, a * dt)  # v moved towards 0 by at most a dt: always feasible
        infeasible = lo > hi  # only through rounding
        hi, lo = np.where(infeasible, brake, hi), np.where(infeasible, brake, lo)
        v_new = np.clip((x - p) / dt, lo, hi)
        p_new = np.clip(p + v_new * dt, self.lower, self.upper)
        v_new = (p_new - p) / dt
        self.state = LimiterState(p_new, v_new, (v_new - v) / dt)
        return self.state
