"""Turn -> limited joint trajectory, trajectory-controller semantics and the simulated servo head."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from timar_model.runtime.robot_head import HeadJointMapper, JointMapping, default_head_mapping
from timar_model.runtime.trajectory import (
    ServoActuator,
    Trajectory,
    TrajectoryFollower,
    TrajectoryPlanner,
)

FPS = 25.0
DT = 1.0 / FPS
LIMITS = [j.limits for j in default_head_mapping()]
LOWER = np.array([lim.lower for lim in LIMITS])
UPPER = np.array([lim.upper for lim in LIMITS])
VMAX = np.array([lim.max_velocity for lim in LIMITS])
AMAX = np.array([lim.max_acceleration for lim in LIMITS])


def motion_from_angles(yaw_pitch_roll: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    """(F, 3) head angles + (F,) jaw opening -> (F, 56) FLAME motion."""
    m = np.zeros((len(jaw), 56))
    m[:, 53:56] = Rotation.from_euler("YXZ", yaw_pitch_roll).as_rotvec()
    m[:, 50] = jaw
    return m


def random_turn(rng: np.random.Generator, frames: int = 25) -> np.ndarray:
    """Head motion that is sometimes smooth, sometimes jumps far outside the limits."""
    t = np.arange(frames) / FPS + rng.uniform(0, 10)
    if rng.random() < 0.5:
        ypr = 0.6 * np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t[:, None] + rng.uniform(0, 6, 3))
        jaw = 0.3 * (1 + np.sin(2 * np.pi * rng.uniform(1, 6) * t))
    else:
        ypr = rng.normal(scale=0.8, size=(frames, 3))
        jaw = rng.normal(scale=0.5, size=frames)
    return motion_from_angles(ypr, jaw)


def check_limits(p: np.ndarray, dt: float, p_before: np.ndarray | None = None) -> None:
    """Positions (N, J) at spacing dt obey the default limits, also in their finite differences."""
    assert np.all(p >= LOWER - 1e-12) and np.all(p <= UPPER + 1e-12)
    v = np.diff(p, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    assert np.all(np.abs(v) <= VMAX * (1 + 1e-9))
    assert np.all(np.abs(a) <= AMAX * (1 + 1e-6))


def check_points(plan) -> None:
    assert np.all(plan.positions >= LOWER - 1e-12) and np.all(plan.positions <= UPPER + 1e-12)
    assert np.all(np.abs(plan.velocities) <= VMAX * (1 + 1e-9))
    assert np.all(np.abs(plan.accelerations) <= AMAX * (1 + 1e-6))


# ----------------------------------------------------------------------------- planner
def test_limits_hold_over_random_turns_and_across_them():
    rng = np.random.default_rng(0)
    planner = TrajectoryPlanner()
    frames = []
    for k in range(40):
        plan = planner.plan(random_turn(rng), start=100.0 + k, fps=FPS)
        check_points(plan)
        np.testing.assert_allclose(plan.time_from_start, np.arange(25) * DT, atol=1e-9)
        assert plan.start == pytest.approx(100.0 + k) and plan.first_new == 0
        assert plan.continuous == (k > 0) and plan.names == ["neck_yaw", "neck_pitch", "neck_roll", "jaw"]
        frames.append(plan.positions)
    check_limits(np.concatenate(frames), DT)  # every step, also last of turn k -> first of turn k + 1
    assert planner.discontinuities == 0 and planner.turns == 40
    assert np.ptp(np.concatenate(frames), axis=0).min() > 0.1  # it really moves


def test_consecutive_turns_equal_one_long_turn():
    rng = np.random.default_rng(1)
    motion = np.concatenate([random_turn(rng) for _ in range(3)])
    whole = TrajectoryPlanner().plan(motion, start=5.0, fps=FPS)
    split = TrajectoryPlanner()
    parts = [split.plan(motion[25 * k: 25 * (k + 1)], start=5.0 + k, fps=FPS) for k in range(3)]
    np.testing.assert_allclose(np.concatenate([p.positions for p in parts]), whole.positions, atol=1e-12)
    # the tangent at a turn's last point is one-sided until the next turn extends it; all others are equal
    inner = np.ones(75, bool)
    inner[[24, 49]] = False
    np.testing.assert_allclose(np.concatenate([p.velocities for p in parts])[inner], whole.velocities[inner],
                               atol=1e-12)


def test_carry_over_of_points_not_yet_due():
    rng = np.random.default_rng(2)
    planner = TrajectoryPlanner()
    first = planner.plan(random_turn(rng), start=10.0, fps=FPS, now=9.5)
    assert first.first_new == 0
    # turn 2 is generated while turn 1 plays: at 10.71 s, points of turn 1 due after 10.73 are carried over
    second = planner.plan(random_turn(rng), start=11.0, fps=FPS, now=10.71)
    carried = first.times > 10.73
    assert second.first_new == carried.sum() == 6 and second.continuous
    assert second.start == pytest.approx(10.76)
    np.testing.assert_allclose(second.time_from_start, np.arange(31) * DT, atol=1e-9)  # one uniform grid
    np.testing.assert_allclose(second.positions[:6], first.positions[carried])
    np.testing.assert_allclose(second.velocities[:5], first.velocities[carried][:-1])
    # turn 1's last point is interior now: central difference of its neighbours, not the one-sided one
    central = (second.positions[6] - second.positions[4]) / (2 * DT)
    np.testing.assert_allclose(second.velocities[5], central, atol=1e-12)
    assert second.frames.all()
    check_points(second)
    check_limits(second.positions, DT)


def test_gap_restarts_from_rest_and_epoch_alone_does_not():
    rng = np.random.default_rng(3)
    planner = TrajectoryPlanner(max_gap=0.1)
    a = planner.plan(random_turn(rng), start=0.0, fps=FPS, epoch=0)
    b = planner.plan(random_turn(rng), start=1.0, fps=FPS, epoch=1)  # new epoch, no gap: continuous
    assert b.continuous and planner.epoch_changes == 1 and planner.discontinuities == 0
    check_limits(np.concatenate([a.positions, b.positions]), DT)
    c = planner.plan(random_turn(rng), start=5.0, fps=FPS, epoch=1, now=4.5)  # 3 s gap
    assert not c.continuous and planner.discontinuities == 1
    # one hold point a frame before the turn: the last commanded position, at rest
    assert c.first_new == 1 and not c.frames[0] and c.frames[1:].all()
    assert c.start == pytest.approx(5.0 - DT)
    np.testing.assert_allclose(c.positions[0], b.positions[-1])
    assert np.all(c.velocities[0] == 0) and np.all(c.accelerations[0] == 0)
    check_limits(c.positions, DT, p_before=None)  # from rest: the first step is at most amax dt^2
    check_points(c)
    # d overlaps c: c is cut at its last point before d's start and d continues from the limiter's state there
    # (what a controller splicing d in at 5.5 s is doing then)
    d = planner.plan(random_turn(rng), start=5.5, fps=FPS)
    assert d.continuous and planner.discontinuities == 1 and planner.rewinds == 1 and d.first_new == 0
    cut = c.times < 5.5 - DT / 2  # c's grid is 5.0 + k DT: its last point before d is at 5.44 (a 0.06 s gap)
    t = np.concatenate([c.times[cut], d.times])
    p = np.concatenate([c.positions[cut], d.positions])
    v = np.diff(p, axis=0) / np.diff(t)[:, None]  # the limiter steps with the actual spacing
    assert np.all(np.abs(v) <= VMAX * (1 + 1e-9))
    assert np.all(np.abs(np.diff(v, axis=0)) / np.diff(t)[1:, None] <= AMAX * (1 + 1e-6))
    e = planner.plan(random_turn(rng), start=2.0, fps=FPS)  # before every point of d: restart at rest
    assert not e.continuous and planner.discontinuities == 2 and planner.rewinds == 1
    assert np.all(np.abs(e.positions[0] - d.positions[-1]) <= AMAX * DT * DT * (1 + 1e-9))


def test_nan_frames_hold_and_are_counted():
    still = motion_from_angles(np.tile([0.2, -0.1, 0.05], (25, 1)), np.full(25, 0.2))
    planner = TrajectoryPlanner()
    planner.plan(np.concatenate([still, still]), start=0.0, fps=FPS)  # settles on the target
    bad = still.copy()
    bad[5:20, 53:56] = np.nan
    bad[10, 50] = np.inf
    plan = planner.plan(bad, start=2.0, fps=FPS)
    assert plan.nan_frames == 15 and planner.nan_frames == 15
    assert np.all(np.isfinite(plan.positions))
    np.testing.assert_allclose(plan.positions, np.tile([0.2, -0.1, 0.05, 0.2], (25, 1)), atol=1e-9)


def test_bad_turns_are_refused():
    planner = TrajectoryPlanner()
    for motion, fps in ((np.zeros((25, 53)), FPS), (np.zeros((0, 56)), FPS), (np.zeros((25, 56)), 0.0),
                        (np.zeros((25, 56)), float("nan"))):
        with pytest.raises(ValueError):
            planner.plan(motion, start=0.0, fps=fps)
    with pytest.raises(ValueError, match="start"):
        planner.plan(np.zeros((25, 56)), start=float("nan"), fps=FPS)


def test_live_mapping_change_keeps_the_state():
    rng = np.random.default_rng(4)
    planner = TrajectoryPlanner()
    a = planner.plan(random_turn(rng), start=0.0, fps=FPS)
    joints = default_head_mapping()
    joints[0] = JointMapping("neck_yaw", "yaw", sign=-1.0, gain=0.5, limits=joints[0].limits)
    planner.set_mapper(HeadJointMapper(joints))
    b = planner.plan(random_turn(rng), start=1.0, fps=FPS)
    assert b.continuous
    check_limits(np.concatenate([a.positions, b.positions]), DT)
    with pytest.raises(ValueError, match="differ"):
        planner.set_mapper(HeadJointMapper([JointMapping("x", "yaw")]))


# ----------------------------------------------------------------------------- follower
def traj(start, tfs, pos, vel=None):
    return Trajectory(start=start, time_from_start=np.asarray(tfs, float), positions=np.asarray(pos, float),
                      velocities=None if vel is None else np.asarray(vel, float))


def test_follower_is_exact_at_points_and_holds_outside():
    f = TrajectoryFollower(np.zeros(2))
    pos = np.array([[0.1, 0.0], [0.3, -0.2], [0.2, 0.1]])
    vel = np.array([[0.5, 0.0], [0.0, 0.3], [-0.2, 0.0]])
    assert f.set(traj(10.0, [0.0, 0.5, 1.0], pos, vel), received_at=9.0) == 3
    p, v = f.sample(9.5)  # before the start: hold the initial position
    np.testing.assert_array_equal(p, [0, 0]) and np.testing.assert_array_equal(v, [0, 0])
    for t, pi, vi in zip([10.0, 10.5], pos, vel):
        p, v = f.sample(t)
        np.testing.assert_allclose(p, pi, atol=1e-15)
        np.testing.assert_allclose(v, vi, atol=1e-12)
    p, v = f.sample(11.0)
    np.testing.assert_allclose(p, pos[-1]) and np.testing.assert_array_equal(v, [0, 0])  # after: hold
    p, _ = f.sample(20.0)
    np.testing.assert_allclose(p, pos[-1])
    # Hermite in between: derivative of the sampled position = sampled velocity
    t, e = 10.3, 1e-6
    dp = (f.sample(t + e)[0] - f.sample(t - e)[0]) / (2 * e)
    np.testing.assert_allclose(dp, f.sample(t)[1], atol=1e-6)
    assert f.end_time == pytest.approx(11.0) and f.first_point_time == pytest.approx(10.0)


def test_follower_interpolates_linearly_without_velocities():
    f = TrajectoryFollower(np.zeros(1))
    f.set(traj(0.0, [0.0, 1.0], [[0.0], [1.0]]), received_at=-0.5)  # start 0 = at receipt
    p, v = f.sample(0.0)  # -0.5 + 0.5: halfway
    assert p[0] == pytest.approx(0.5) and v[0] == pytest.approx(1.0)


def test_follower_goes_from_the_current_state_to_the_first_future_point():
    f = TrajectoryFollower(np.array([0.2]))
    f.set(traj(1.0, [0.5, 1.0], [[0.6], [0.6]], [[0.0], [0.0]]), received_at=0.0)
    assert f.sample(1.0)[0][0] == pytest.approx(0.2)  # the start: still the current state
    assert f.sample(1.5)[0][0] == pytest.approx(0.6)
    mid = f.sample(1.25)[0][0]
    assert 0.2 < mid < 0.6


def test_splice_replaces_from_the_new_start_and_now_at_receipt():
    old = traj(0.0, np.arange(0, 2.01, 0.25), np.linspace(0, 0.4, 9)[:, None], np.full((9, 1), 0.2))
    new = traj(1.0, [0.25, 0.5], [[-0.3], [-0.3]], [[0.0], [0.0]])
    splice, now = TrajectoryFollower(np.zeros(1)), TrajectoryFollower(np.zeros(1), replacement="now")
    for f in (splice, now):
        f.set(old, received_at=0.0)  # start 0: from receipt on
    ref_old = [splice.sample(t)[0][0] for t in (0.6, 0.7, 0.99)]
    for f in (splice, now):
        f.set(new, received_at=0.6)
    # splice: the old trajectory goes on until the new start (1.0), exactly
    np.testing.assert_allclose([splice.sample(t)[0][0] for t in (0.6, 0.7, 0.99)], ref_old, atol=1e-12)
    assert splice.sample(1.0)[0][0] == pytest.approx(0.2)
    # now: from the state at receipt towards the first new point
    assert now.sample(0.6)[0][0] == pytest.approx(ref_old[0])
    assert now.sample(0.99)[0][0] < ref_old[2]
    for f in (splice, now):
        assert f.sample(1.25)[0][0] == pytest.approx(-0.3) and f.sample(3.0)[0][0] == pytest.approx(-0.3)
    # continuous at the switch (position), both ways
    e = 1e-7
    assert splice.sample(1.0 - e)[0][0] == pytest.approx(splice.sample(1.0 + e)[0][0], abs=1e-5)
    assert now.sample(0.6 - e)[0][0] == pytest.approx(now.sample(0.6 + e)[0][0], abs=1e-5)
    with pytest.raises(ValueError, match="replacement"):
        TrajectoryFollower(np.zeros(1), replacement="merge")


def test_points_already_due_are_dropped_and_all_past_is_rejected():
    f = TrajectoryFollower(np.zeros(1))
    f.set(traj(5.0, [0.0, 0.1, 0.2, 0.3], [[0.1], [0.2], [0.3], [0.4]]), received_at=5.15)
    assert f.dropped_points == 2 and f.rejected == 0
    assert f.sample(5.2)[0][0] == pytest.approx(0.3) and f.sample(5.3)[0][0] == pytest.approx(0.4)
    assert f.set(traj(1.0, [0.0, 0.5], [[-1.0], [-1.0]]), received_at=5.25) == 0
    assert f.rejected == 1 and f.dropped_points == 4 and f.received == 2
    assert f.sample(5.3)[0][0] == pytest.approx(0.4)  # the old plan goes on
    with pytest.raises(ValueError, match="increasing"):
        traj(0.0, [0.0, 0.0], [[0.0], [0.0]])
    with pytest.raises(ValueError, match="finite"):
        traj(0.0, [0.0], [[np.nan]])
    with pytest.raises(ValueError, match="joints"):
        f.set(traj(0.0, [0.0], [[0.0, 0.0]]), received_at=6.0)


def _reference(plans, receipts, replacement, times):
    f = TrajectoryFollower(plans[0].positions[0], replacement=replacement)
    out, k = [], 0
    for t in times:
        while k < len(plans) and receipts[k] <= t:
            pl = plans[k]
            f.set(Trajectory(pl.start, pl.time_from_start, pl.positions, pl.velocities), receipts[k])
            k += 1
        out.append(f.sample(t))
    return np.array([o[0] for o in out]), np.array([o[1] for o in out]), f


def test_carried_over_plans_play_the_same_under_both_replacements():
    rng = np.random.default_rng(5)
    starts = 100.0 + np.arange(6)
    receipts = starts - rng.uniform(0.05, 0.9, 6)  # each turn arrives before it is due
    motions = [random_turn(rng) for _ in starts]
    planner = TrajectoryPlanner()
    plans = [planner.plan(m, s, FPS, now=r) for m, s, r in zip(motions, starts, receipts)]
    times = np.arange(starts[0], starts[-1] + 1.0, 0.01)
    p_splice, v_splice, fs = _reference(plans, receipts, "splice", times)
    p_now, _, fn = _reference(plans, receipts, "now", times)
    # a controller that replaces at receipt goes from its state there to the first carried point (half a frame
    # or more ahead) instead of through the points in between: within an acceleration-limited sliver of them
    assert np.all(np.abs(p_now - p_splice).max(axis=0) <= AMAX * (1.5 * DT) ** 2 / 4)
    assert fs.dropped_points == fn.dropped_points == 0
    # at every frame the reference is the planned position; between frames it stays near the limits
    frames = np.concatenate([pl.positions[pl.first_new:] for pl in plans])
    idx = np.searchsorted(times, starts[0] + np.arange(150) * DT - 1e-9)
    np.testing.assert_allclose(p_splice[idx], frames, atol=1e-9)
    assert np.all(np.abs(v_splice) <= VMAX + AMAX * DT / 2)
    # without the carry-over, a controller that replaces at receipt cuts every turn short
    bare = TrajectoryPlanner()
    plans_bare = [bare.plan(m, s, FPS) for m, s in zip(motions, starts)]
    p_bare_now, _, _ = _reference(plans_bare, receipts, "now", times)
    p_bare_splice, _, _ = _reference(plans_bare, receipts, "splice", times)
    np.testing.assert_allclose(p_bare_splice[idx], frames, atol=1e-9)
    assert np.abs(p_bare_now - p_bare_splice).max() > 0.05


# ----------------------------------------------------------------------------- actuator
def test_servo_converges_on_a_constant_reference():
    act = ServoActuator(LIMITS, bandwidth=12.0)
    ref = np.array([0.3, -0.2, 0.1, 0.3])  # far: acceleration and velocity saturate on the way
    ps = []
    for _ in range(100):
        p, v = act.step(ref, np.zeros(4), 0.01)
        assert np.all(np.abs(v) <= VMAX + 1e-12)
        ps.append(p)
    assert np.abs(ref - ps[-1]).max() < 1e-6
    check_limits(np.array(ps), 0.01)
    # a step small enough for the linear servo: critically damped, so no overshoot, monotone approach
    small = ServoActuator(LIMITS, bandwidth=12.0, position=ref)
    ref2 = ref + np.array([2e-3, -2e-3, 1e-3, -1e-3])
    err = np.array([ref2 - small.step(ref2, np.zeros(4), 0.01)[0] for _ in range(50)])
    assert np.all(err * np.sign(ref2 - ref) >= -1e-12)
    assert np.all(np.diff(np.abs(err), axis=0) <= 1e-12) and np.abs(err[-1]).max() < 1e-8


def test_servo_error_is_bounded_on_a_smooth_reference_and_limits_hold():
    bw = 12.0
    act = ServoActuator(LIMITS, bandwidth=bw)
    amp, freq, dt = np.array([0.4, 0.3, 0.2, 0.15]), 0.7, 0.01
    ps, errs = [], []
    for k in range(400):
        t = k * dt
        r = amp * np.sin(2 * np.pi * freq * t) + np.array([0, 0, 0, 0.2])
        rv = amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t)
        p, _ = act.step(r, rv, dt)
        ps.append(p)
        t1 = t + dt
        errs.append(amp * np.sin(2 * np.pi * freq * t1) + np.array([0, 0, 0, 0.2]) - p)
    errs = np.array(errs)[100:]
    lag_bound = 2 * amp * 2 * np.pi * freq / (2 * np.pi * bw)  # ramp error 2 v / w at the peak speed
    assert np.all(np.abs(errs).max(axis=0) <= 1.2 * lag_bound)
    assert np.all(np.abs(errs).max(axis=0) >= 0.5 * lag_bound)  # a real, measurable tracking error
    check_limits(np.array(ps), dt)
    # the same motion stepped at another rate: the sub-steps make it rate-independent
    act2 = ServoActuator(LIMITS, bandwidth=bw)
    for k in range(160):
        t = k * 0.025
        act2.step(amp * np.sin(2 * np.pi * freq * t) + np.array([0, 0, 0, 0.2]),
                  amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t), 0.025)
    np.testing.assert_allclose(act2.position, ps[-1], atol=2e-3)
    with pytest.raises(ValueError, match="bandwidth"):
        act.set_bandwidth(0.0)
