"""Joint trajectories for a physical head, and what a trajectory controller and a servo head make of them.

- `TrajectoryPlanner`: one generated turn of FLAME motion (F, 56), shown from a first display time at `fps`,
  -> a `PlannedTrajectory` of joint positions, velocities and accelerations at those display times, through
  `HeadJointMapper` and one `RateLimiter` whose state is kept from turn to turn, so consecutive turns join
  within the position, velocity and acceleration limits. `plan_neutral` eases the head from its last
  commanded position to the neutral pose within the same limits (the head bridge's watchdog, when the agent
  stops sending turns).
- `TrajectoryFollower`: the sampling semantics of a joint_trajectory_controller (ros2_control): a new
  trajectory replaces the rest of the old one from its start time on, points already due at receipt are
  dropped, the reference is interpolated between points (cubic Hermite with velocities, else linear) and held
  before the first and after the last.
- `ServoActuator`: a simulated head whose joints follow that reference as critically damped second-order
  position servos within the same velocity and acceleration limits, so tracking error is real and measurable.

Times are seconds on the clock of the message stamps; positions rad, velocities rad/s, accelerations rad/s^2.
No ROS import: the head bridge and sim_head nodes feed these classes and publish what comes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from timar_model.motion import MOTION_DIM, hold_then_ease
from timar_model.runtime.robot_head import HeadJointMapper, JointLimits, RateLimiter

# ------------------------------------------------------------------ turn -> limited joint trajectory


@dataclass
class PlannedTrajectory:
    """What the head bridge publishes for one turn: N points on one time line.

    Points before `first_new` are carried over: when the turn continues the previous one, they are the
    previous plan's points due more than half a frame after this turn was planned (a controller that
    replaces its trajectory on receipt then loses nothing, the join between the turns is one spline segment,
    and the half frame covers the transport to the controller); after a gap, a single point one frame before
    the turn holds the last commanded position at rest.
    """

    names: list[str]
    times: np.ndarray  # (N,) s, absolute, strictly increasing
    positions: np.ndarray  # (N, J) rad
    velocities: np.ndarray  # (N, J) rad/s
    accelerations: np.ndarray  # (N, J) rad/s^2
    frames: np.ndarray  # (N,) bool: the point is a motion frame (False for the hold point after a gap)
    first_new: int  # index of this turn's frames[0]
    continuous: bool  # this turn continues the previous one (limiter velocity carried over)
    nan_frames: int  # frames of this turn whose joint targets were not finite (the limiter held them)
    limiter_velocities: np.ndarray | None = None  # (N, J) the limiter's backward differences (its state)

    @property
    def start(self) -> float:
        """Time of the first point (the JointTrajectory header stamp), s."""
        return float(self.times[0])

    @property
    def time_from_start(self) -> np.ndarray:
        """(N,) s from the first point."""
        return self.times - self.times[0]


class TrajectoryPlanner:
    """Turns of FLAME motion -> limited joint trajectories, continuous from one turn to the next.

    The limiter's state (position, velocity) carries over between turns. A turn continues the previous one
    when it starts more than 0 and at most `max_gap` s after the previous turn's last frame: its first frame
    is one limiter step from that frame (dt = the actual gap). Otherwise (a longer gap, or a turn that starts
    at or before the previous one's last frame) nothing pretends continuity: a controller holds the last point
    of a finished trajectory, so the limiter restarts at rest from the last commanded position (counted in
    `discontinuities`). Epoch changes (timeline resets of the agent) are counted; continuity is decided by
    time alone, because the head moves continuously in time whatever the agent's timeline does.

    A turn that starts before the previous plan's last point (the agent back while the watchdog's ease to
    neutral is still under way, or any overlap) cuts the previous plan at its last point before the new start
    and continues from the limiter's state there (what a controller that splices the new trajectory in is
    doing at that time); with no point of the previous plan before the new start, it restarts at rest.

    Published velocities are the mean of the limiter's backward differences on both sides of a point (the
    tangent of a Catmull-Rom spline through the points; the last point of a plan has its backward difference
    until the next turn extends it), accelerations the second difference, so a cubic or quintic spline
    through the points follows them without the half-frame lag of backward differences. All three stay within
    the limits: |v| <= max_velocity and |a| <= max_acceleration at every point, positions within
    [lower, upper], and the finite differences between consecutive points (also across turns) obey them too.
    """

    def __init__(self, mapper: HeadJointMapper | None = None, max_gap: float = 0.1) -> None:
        self.mapper = mapper or HeadJointMapper()
        self.limiter = RateLimiter(self.mapper.limits)
        self.max_gap = float(max_gap)
        self.turns = 0
        self.nan_frames = 0
        self.discontinuities = 0
        self.epoch_changes = 0
        self.rewinds = 0  # plans that started before the previous plan's end (cut there)
        self.neutral_plans = 0
        self._plan: PlannedTrajectory | None = None
        self._epoch: int | None = None

    @property
    def names(self) -> list[str]:
        return self.mapper.names

    def set_mapper(self, mapper: HeadJointMapper) -> None:
        """New signs, gains, offsets or limits for the same joints, applied from the next turn on.

        The limiter keeps its state, clipped into the new limits (a position outside new position limits
        moves inside at once: hard limits win)."""
        if mapper.names != self.mapper.names:
            raise ValueError(f"set_mapper: joints {mapper.names} differ from {self.mapper.names}")
        limiter = RateLimiter(mapper.limits)
        limiter.nan_inputs, limiter.clamped = self.limiter.nan_inputs, self.limiter.clamped
        if self.limiter.state is not None:
            limiter.reset(self.limiter.state.position)
            assert limiter.state is not None
            limiter.state.velocity = np.clip(self.limiter.state.velocity, -limiter.vmax, limiter.vmax)
        self.mapper, self.limiter = mapper, limiter

    def plan(self, motion: np.ndarray, start: float, fps: float, epoch: int = 0,
             now: float | None = None) -> PlannedTrajectory:
        """One turn: motion (F, 56) shown at start + i / fps (s) -> its limited trajectory.

        `now` (s, same clock): when this turn continues the previous one, the previous plan's points due
        after now + half a frame are carried over; the hold point after a gap is only added if it is due after
        now + half a frame. None carries nothing over (the hold point is still added)."""
        m = np.asarray(motion, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] != MOTION_DIM:
            raise ValueError(f"plan: expected (F >= 1, {MOTION_DIM}) motion, got {m.shape}")
        self._check_time(start, fps)
        with np.errstate(invalid="ignore"):  # NaN stays NaN and the limiter holds the last target
            targets = self.mapper.targets(m)  # (F, J)
        if self._plan is not None and self._epoch is not None and epoch != self._epoch:
            self.epoch_changes += 1
        self._epoch = epoch
        plan = self._plan_targets(targets, start, fps, now)
        self.turns += 1
        self.nan_frames += plan.nan_frames
        return plan

    @staticmethod
    def _check_time(start: float, fps: float) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"plan: fps must be a positive finite number, got {fps}")
        if not math.isfinite(start):
            raise ValueError(f"plan: start must be finite, got {start}")

    def neutral_position(self) -> np.ndarray:
        """(J,) joint positions of the neutral motion frame (zeros: no expression, jaw closed, head straight),
        within the position limits."""
        return np.clip(self.mapper.targets(np.zeros(MOTION_DIM)), self.limiter.lower, self.limiter.upper)

    def plan_neutral(self, start: float, fps: float, ease: float, now: float | None = None,
                     settle: float = 2.0) -> PlannedTrajectory | None:
        """From the last commanded position (at rest: a controller holds the end of a finished trajectory)
        to the neutral position: targets eased linearly over `ease` s (motion.hold_then_ease, the easing of lost
        motion), through the limiter, then held at neutral until the limiter is at rest there (at most `settle`
        s more). Points at start + i / fps. None before any turn (nothing to ease from)."""
        self._check_time(start, fps)
        if not (math.isfinite(ease) and ease > 0):
            raise ValueError(f"plan_neutral: ease must be > 0 s, got {ease}")
        if self.limiter.state is None:
            return None

        neutral = self.neutral_position()
        here = self.limiter.state.position.copy()
        if self._plan is not None and start > float(self._plan.times[-1]):
            self.limiter.reset(here)  # the controller is at rest at the end of the last trajectory
        e = max(1, math.ceil(ease * fps))
        targets = hold_then_ease(here, np.arange(1, e + 1), 0.0, e, neutral)
        probe = RateLimiter(self.mapper.limits)  # how long the limiter needs to come to rest at neutral
        probe.reset(here)
        n = e
        for i in range(e + math.ceil(settle * fps)):
            st = probe.step(targets[i] if i < e else neutral, 1.0 / fps)
            n = i + 1
            if i >= e - 1 and np.allclose(st.position, neutral, atol=1e-9) and np.allclose(st.velocity, 0, atol=1e-9):
                break
        targets = np.concatenate([targets, np.tile(neutral, (max(0, n - e), 1))])[:n]
        plan = self._plan_targets(targets, start, fps, now)
        self.neutral_plans += 1
        return plan

    def _rewind(self, start: float, dt: float) -> None:
        """The previous plan reaches to or beyond `start`: cut it at its last point before start - dt / 2 and put
        the limiter back in its state there; with no such point, leave everything (restart at rest)."""
        prev = self._plan
        assert prev is not None
        k = int(np.searchsorted(prev.times, start - dt / 2, side="left")) - 1
        if k < 0 or prev.limiter_velocities is None:
            return
        self.rewinds += 1
        self._plan = PlannedTrajectory(
            names=prev.names, times=prev.times[: k + 1], positions=prev.positions[: k + 1],
            velocities=prev.velocities[: k + 1], accelerations=prev.accelerations[: k + 1],
            frames=prev.frames[: k + 1], first_new=min(prev.first_new, k + 1), continuous=prev.continuous,
            nan_frames=prev.nan_frames, limiter_velocities=prev.limiter_velocities[: k + 1],
        )
        self.limiter.reset(prev.positions[k])
        assert self.limiter.state is not None
        self.limiter.state.velocity = prev.limiter_velocities[k].copy()

    def _plan_targets(self, targets: np.ndarray, start: float, fps: float,
                      now: float | None) -> PlannedTrajectory:
        """Joint targets (F, J) shown at start + i / fps -> the limited plan (see the class doc)."""
        dt = 1.0 / fps
        n = targets.shape[0]
        nan_frames = int((~np.isfinite(targets).all(axis=1)).sum())
        if self._plan is not None and start <= float(self._plan.times[-1]):
            self._rewind(start, dt)
        prev = self._plan
        gap = start - float(prev.times[-1]) if prev is not None else math.nan
        continuous = prev is not None and 0.0 < gap <= self.max_gap
        prefix: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]] = []
        dts = np.full(n, dt)
        if continuous:
            assert prev is not None and self.limiter.state is not None
            dts[0] = gap
            last_b = self.limiter.state.velocity.copy()  # backward difference at the previous last point
        elif prev is not None and self.limiter.state is not None:
            self.discontinuities += 1
            hold = self.limiter.state.position.copy()
            self.limiter.reset(hold)  # at rest where a controller holds a finished trajectory
            t_hold = start - dt
            if t_hold > float(prev.times[-1]) and (now is None or t_hold > now + dt / 2):
                z = np.zeros_like(hold)
                prefix.append((t_hold, hold, z, z, False, z))
        P = np.empty_like(targets)
        B = np.empty_like(targets)  # backward-difference velocities (the limiter's)
        A = np.empty_like(targets)  # backward-difference accelerations
        for i in range(n):
            st = self.limiter.step(targets[i], float(dts[i]))
            P[i], B[i], A[i] = st.position, st.velocity, st.acceleration
        V = B.copy()
        V[:-1] = (B[:-1] + B[1:]) / 2
        Acc = A.copy()
        Acc[:-1] = A[1:]
        if continuous and now is not None:
            assert prev is not None
            keep = np.nonzero(prev.times > now + dt / 2)[0]
            prev_b = prev.limiter_velocities if prev.limiter_velocities is not None else prev.velocities
            for k in keep:
                v, a = prev.velocities[k], prev.accelerations[k]
                if k == prev.times.size - 1:  # no longer the last point: its tangent now sees this turn
                    v, a = (last_b + B[0]) / 2, A[0]
                prefix.append((float(prev.times[k]), prev.positions[k], v, a, bool(prev.frames[k]), prev_b[k]))
        times = start + np.arange(n) * dt

        def column(i: int, new: np.ndarray) -> np.ndarray:
            return np.concatenate([np.stack([p[i] for p in prefix]), new]) if prefix else new

        plan = PlannedTrajectory(
            names=self.names,
            times=np.concatenate([[p[0] for p in prefix], times]),
            positions=column(1, P),
            velocities=column(2, V),
            accelerations=column(3, Acc),
            frames=np.concatenate([[p[4] for p in prefix], np.ones(n, bool)]).astype(bool),
            first_new=len(prefix),
            continuous=continuous,
            nan_frames=nan_frames,
            limiter_velocities=column(5, B),
        )
        self._plan = plan
        return plan


# ------------------------------------------------------------------ trajectory controller semantics

LINEAR, CUBIC, HOLD = 0, 1, 2  # interpolation of a segment between two knots
REPLACEMENT = ("splice", "now")


@dataclass
class Trajectory:
    """A received JointTrajectory in the follower's joint order.

    start: s, the header stamp (0 = start at receipt); time_from_start (N,) s, strictly increasing, >= 0;
    positions (N, J) rad; velocities (N, J) rad/s or None (then linear interpolation)."""

    start: float
    time_from_start: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.time_from_start = np.asarray(self.time_from_start, dtype=np.float64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        n = self.time_from_start.size
        if n == 0:
            raise ValueError("Trajectory: no points")
        if self.positions.ndim != 2 or self.positions.shape[0] != n:
            raise ValueError(f"Trajectory: positions must be ({n}, J), got {self.positions.shape}")
        if self.velocities is not None:
            self.velocities = np.asarray(self.velocities, dtype=np.float64)
            if self.velocities.shape != self.positions.shape:
                raise ValueError(f"Trajectory: velocities {self.velocities.shape} != positions {self.positions.shape}")
        arrays = [self.time_from_start, self.positions] + ([self.velocities] if self.velocities is not None else [])
        if not (math.isfinite(self.start) and all(np.isfinite(a).all() for a in arrays)):
            raise ValueError("Trajectory: start, times, positions and velocities must be finite")
        if self.time_from_start[0] < 0 or np.any(np.diff(self.time_from_start) <= 0):
            raise ValueError("Trajectory: time_from_start must be >= 0 and strictly increasing")


def _hermite(t: float, ta: float, tb: float, pa, va, pb, vb) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Hermite through (ta, pa, va) and (tb, pb, vb), evaluated at t -> (position, velocity)."""
    h = tb - ta
    s = (t - ta) / h
    s2, s3 = s * s, s * s * s
    p = (2 * s3 - 3 * s2 + 1) * pa + (s3 - 2 * s2 + s) * h * va + (-2 * s3 + 3 * s2) * pb + (s3 - s2) * h * vb
    v = (6 * s2 - 6 * s) / h * (pa - pb) + (3 * s2 - 4 * s + 1) * va + (3 * s2 - 2 * s) * vb
    return p, v


class TrajectoryFollower:
    """The reference a joint_trajectory_controller commands, sampled at any time.

    `set(trajectory, received_at)`: the trajectory starts at its header stamp (0 = at receipt). Points due at
    or before `received_at` are dropped (`dropped_points`); a trajectory with no point left is rejected
    (`rejected`) and the old one goes on. Otherwise, with replacement "splice" (ROS 1's trajectory replacement
    and the deferred replacement of newer ros2_controllers) the old trajectory is still followed until the new
    start time and replaced from then on; with "now" (the released ros2_control controller) it is replaced at
    receipt. From the switch the reference goes from the state sampled there to the first remaining point
    (cubic Hermite when the points have velocities, else linear), then between points likewise; before the
    first point ever and after the last one it holds (velocity 0).

    Internally a list of knots (time, position, velocity) with one interpolation kind per segment; sample(t)
    is meant for t at or after the latest receipt time (older knots are discarded).
    """

    def __init__(self, initial_position: np.ndarray, replacement: str = "splice") -> None:
        if replacement not in REPLACEMENT:
            raise ValueError(f"TrajectoryFollower: replacement must be one of {REPLACEMENT}, got {replacement!r}")
        p0 = np.asarray(initial_position, dtype=np.float64).reshape(-1)
        self.replacement = replacement
        self.n_joints = p0.size
        self._T = np.array([-math.inf])
        self._P = p0[None].copy()
        self._V = np.zeros_like(self._P)
        self._kind = np.zeros(0, dtype=np.int64)  # one per segment between consecutive knots
        self.received = 0
        self.rejected = 0
        self.dropped_points = 0
        self.first_point_time: float | None = None  # first point of the first accepted trajectory

    @property
    def end_time(self) -> float:
        """Time of the last point of the current plan (s; -inf before any trajectory)."""
        return float(self._T[-1])

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Reference at time t -> (positions (J,), velocities (J,))."""
        T = self._T
        i = int(np.searchsorted(T, t, side="right")) - 1
        zero = np.zeros(self.n_joints)
        if i < 0:
            return self._P[0].copy(), zero
        if i >= T.size - 1:
            return self._P[-1].copy(), zero
        kind = self._kind[i]
        pa, pb = self._P[i], self._P[i + 1]
        if kind == HOLD:
            return pa.copy(), zero
        ta, tb = float(T[i]), float(T[i + 1])
        if kind == LINEAR:
            slope = (pb - pa) / (tb - ta)
            return pa + slope * (t - ta), slope
        return _hermite(t, ta, tb, pa, self._V[i], pb, self._V[i + 1])

    def set(self, trajectory: Trajectory, received_at: float) -> int:
        """Take over a new trajectory received at `received_at` (s) -> the number of points kept."""
        tr = trajectory
        if tr.positions.shape[1] != self.n_joints:
            raise ValueError(f"TrajectoryFollower.set: expected {self.n_joints} joints, got {tr.positions.shape[1]}")
        self.received += 1
        base = received_at if tr.start == 0 else tr.start
        times = base + tr.time_from_start
        future = times > received_at
        self.dropped_points += int((~future).sum())
        if not future.any():
            self.rejected += 1
            return 0
        t_switch = received_at if self.replacement == "now" else max(base, received_at)
        p_sw, v_sw = self.sample(t_switch)
        T, P, V, K = self._T, self._P, self._V, self._kind
        i = int(np.searchsorted(T, t_switch, side="right"))  # knots T[:i] lie at or before the switch
        kinds_old = [int(k) for k in K[: max(i - 1, 0)]]
        if i >= 1 and T[i - 1] == t_switch:  # switching at a knot: the old plan ends on it
            T, P, V = T[:i], P[:i], V[:i]
        else:  # a knot at the switch with the state sampled there; the old segment is cut at it
            if i >= 1:
                kinds_old.append(int(K[i - 1]) if i - 1 < K.size else HOLD)
            T = np.concatenate([T[:i], [t_switch]])
            P = np.concatenate([P[:i], p_sw[None]])
            V = np.concatenate([V[:i], v_sw[None]])
        new_t = times[future]
        new_p = tr.positions[future]
        new_v = tr.velocities[future] if tr.velocities is not None else np.zeros_like(new_p)
        kind_new = CUBIC if tr.velocities is not None else LINEAR
        self._T = np.concatenate([T, new_t])
        self._P = np.concatenate([P, new_p])
        self._V = np.concatenate([V, new_v])
        self._kind = np.array(kinds_old + [kind_new] * new_t.size, dtype=np.int64)
        if self.first_point_time is None:
            self.first_point_time = float(new_t[0])
        self._prune(received_at)
        return int(new_t.size)

    def _prune(self, t: float) -> None:
        """Forget knots that no sample at or after t can reach."""
        j = int(np.searchsorted(self._T, t, side="right")) - 1
        if j > 0:
            self._T, self._P, self._V = self._T[j:], self._P[j:], self._V[j:]
            self._kind = self._kind[j:]


# ------------------------------------------------------------------ simulated head


class ServoActuator:
    """Each joint a critically damped second-order position servo: x'' = w^2 (r - x) - 2 w x'.

    w = 2 pi bandwidth (bandwidth in Hz, the natural frequency). The servo sees only the position reference r;
    within one control period r moves on with the sampled reference velocity (first-order hold). Acceleration
    and velocity are clipped to the joint limits and the position stops at [lower, upper]. Integrated with
    semi-implicit Euler in sub-steps of at most 0.1 / w, so the result does not depend on the control rate.
    A ramp at speed v is followed with a lag of 2 / w s (error 2 v / w); a constant reference is reached
    without overshoot.
    """

    def __init__(self, limits: list[JointLimits], bandwidth: float = 12.0,
                 position: np.ndarray | None = None) -> None:
        if not limits:
            raise ValueError("ServoActuator: needs at least one joint")
        self.lower = np.array([lim.lower for lim in limits])
        self.upper = np.array([lim.upper for lim in limits])
        self.vmax = np.array([lim.max_velocity for lim in limits])
        self.amax = np.array([lim.max_acceleration for lim in limits])
        self.bandwidth = 0.0
        self.set_bandwidth(bandwidth)
        p0 = np.zeros(len(limits)) if position is None else np.asarray(position, dtype=np.float64).reshape(-1)
        self.position = np.clip(p0, self.lower, self.upper)
        self.velocity = np.zeros_like(self.position)

    def set_bandwidth(self, bandwidth: float) -> None:
        """Natural frequency in Hz (> 0)."""
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"ServoActuator: bandwidth must be > 0 Hz, got {bandwidth}")
        self.bandwidth = float(bandwidth)

    def step(self, reference: np.ndarray, reference_velocity: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance dt s towards the reference (J,) rad moving at reference_velocity (J,) rad/s ->
        (position, velocity) at the end of the step."""
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"ServoActuator.step: dt must be > 0, got {dt}")
        w = 2 * math.pi * self.bandwidth
        n = max(1, math.ceil(dt * w / 0.1))
        h = dt / n
        r0 = np.asarray(reference, dtype=np.float64)
        rv = np.asarray(reference_velocity, dtype=np.float64)
        p, v = self.position, self.velocity
        amax, vmax = self.amax, self.vmax
        for k in range(n):
            a = np.minimum(np.maximum(w * w * (r0 + rv * (k * h) - p) - 2 * w * v, -amax), amax)
            v = np.minimum(np.maximum(v + a * h, -vmax), vmax)
            p = p + v * h
            stop = (p < self.lower) | (p > self.upper)
            if stop.any():
                p = np.clip(p, self.lower, self.upper)
                v = np.where(stop, 0.0, v)
        self.position, self.velocity = p, v
        return p.copy(), v.copy()
