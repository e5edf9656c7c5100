"""Head bridge math: rotations, joint mapping and the limiter that never exceeds its limits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from timar_model.runtime.robot_head import (
    HeadJointMapper,
    JointLimits,
    JointMapping,
    RateLimiter,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    head_angles,
    quaternion_to_axis_angle,
)


def test_rotations_match_scipy():
    rng = np.random.default_rng(0)
    rv = rng.normal(scale=0.8, size=(50, 3))
    np.testing.assert_allclose(axis_angle_to_matrix(rv), Rotation.from_rotvec(rv).as_matrix(), atol=1e-12)
    q = axis_angle_to_quaternion(rv)
    np.testing.assert_allclose(np.abs((q * Rotation.from_rotvec(rv).as_quat()).sum(-1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_axis_angle(q), rv, atol=1e-9)
    np.testing.assert_allclose(quaternion_to_axis_angle(np.array([0.0, 0, 0, 1])), 0.0)
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_axis_angle(np.zeros(4))


def test_head_angles_decompose_yaw_pitch_roll_and_jaw():
    ypr = np.array([0.3, -0.2, 0.1])
    m = np.zeros(56)
    m[53:56] = Rotation.from_euler("YXZ", ypr).as_rotvec()  # intrinsic: Ry @ Rx @ Rz
    m[50:53] = [0.25, 0.0, 0.0]  # jaw opens about x
    np.testing.assert_allclose(head_angles(m), [0.3, -0.2, 0.1, 0.25], atol=1e-12)
    with pytest.raises(ValueError, match="56"):
        head_angles(np.zeros(53))


def test_mapper_sign_gain_offset_and_validation():
    joints = [
        JointMapping("yaw", "yaw", sign=-1.0, gain=2.0, offset=0.1),
        JointMapping("mouth", "jaw", gain=0.5),
    ]
    mapper = HeadJointMapper(joints)
    m = np.zeros((2, 56))
    m[:, 53:56] = Rotation.from_euler("YXZ", [0.2, 0.0, 0.0]).as_rotvec()
    m[:, 50] = 0.4
    np.testing.assert_allclose(mapper.targets(m), [[-0.3, 0.2], [-0.3, 0.2]], atol=1e-12)
    assert mapper.names == ["yaw", "mouth"]
    with pytest.raises(ValueError, match="source"):
        JointMapping("x", "nod")
    with pytest.raises(ValueError, match="duplicate"):
        HeadJointMapper([JointMapping("a", "yaw"), JointMapping("a", "jaw")])
    with pytest.raises(ValueError, match="lower"):
        JointLimits(0.5, 0.1, 1.0, 1.0)


def _check_limits(positions, limits: list[JointLimits], dt: float, p0=None):
    p = np.asarray(positions)
    v = np.diff(p, axis=0, prepend=p[:1] if p0 is None else p0[None]) / dt
    a = np.diff(v, axis=0, prepend=np.zeros_like(v[:1])) / dt
    for j, lim in enumerate(limits):
        assert np.all(p[:, j] >= lim.lower - 1e-12) and np.all(p[:, j] <= lim.upper + 1e-12)
        assert np.max(np.abs(v[:, j])) <= lim.max_velocity * (1 + 1e-9)
        assert np.max(np.abs(a[:, j])) <= lim.max_acceleration * (1 + 1e-6)


def test_limiter_never_exceeds_limits_on_wild_input():
    rng = np.random.default_rng(3)
    limits = [JointLimits(-0.5, 0.5, 1.0, 8.0), JointLimits(0.0, 0.4, 3.0, 50.0)]
    lim = RateLimiter(limits)
    dt = 0.04
    targets = rng.normal(scale=2.0, size=(500, 2))  # far outside limits, jumping every step
    targets[::7] = np.nan
    targets[::11, 1] = np.inf
    states = [lim.step(t, dt) for t in targets]
    pos = np.array([s.position for s in states])
    _check_limits(pos, limits, dt)
    np.testing.assert_allclose(np.array([s.velocity for s in states])[1:], np.diff(pos, axis=0) / dt)
    assert lim.nan_inputs == int((~np.isfinite(targets)).sum()) == 2 * 72 + 46 - 7
    assert lim.clamped > 0


def test_limiter_tracks_reachable_targets_and_brakes_before_limits():
    limits = [JointLimits(-1.0, 1.0, 2.0, 10.0)]
    lim = RateLimiter(limits)
    dt = 0.01
    lim.step([0.0], dt)
    pos = [lim.step([0.9], dt).position[0] for _ in range(300)]
    assert pos[-1] == pytest.approx(0.9, abs=1e-9)  # reaches a reachable target
    _check_limits(np.array(pos)[:, None], limits, dt, p0=np.array([0.0]))
    # a step to the upper limit at full speed must brake in time
    lim.reset([-1.0])
    pos = [lim.step([5.0], dt).position[0] for _ in range(300)]
    _check_limits(np.array(pos)[:, None], limits, dt, p0=np.array([-1.0]))
    assert pos[-1] == pytest.approx(1.0, abs=1e-9)


def test_limiter_holds_last_target_on_nan_and_rejects_bad_dt():
    lim = RateLimiter([JointLimits(-1.0, 1.0, 10.0, 1000.0)])
    lim.step([0.2], 0.04)
    s = lim.step([np.nan], 0.04)
    assert s.position[0] == pytest.approx(0.2) and lim.nan_inputs == 1
    with pytest.raises(ValueError, match="dt"):
        lim.step([0.0], 0.0)
    with pytest.raises(ValueError, match="targets"):
        lim.step([0.0, 1.0], 0.04)
