"""agent/motion_turn -> agent/joint_trajectory at once, and agent/joint_states at each frame's display time.

The agent publishes each turn (timar_msgs/HeadMotionTurn) as soon as it is generated, ahead of its first
frame's display time. The bridge maps it through TrajectoryPlanner (HeadJointMapper: axis, sign, gain, offset;
RateLimiter: position, velocity and acceleration limits, its state kept from turn to turn) and publishes at
once one trajectory_msgs/JointTrajectory:
- header.stamp = the time of its first point; point i is due at header.stamp + time_from_start (1 / fps
  apart), so a joint_trajectory_controller receives every point before it is due;
- points = the previous turn's points due more than half a frame after this turn arrives, then this turn's
  frames (a controller that replaces its trajectory on receipt, as the released ros2_control one does,
  loses nothing, and two turns join in one spline segment); after a gap, one point a frame before the turn
  that holds the last commanded position at rest; header.stamp is the first of these points' time, or
  frames[0]'s when there is none;
- positions, velocities, accelerations within the limits.
The commanded state of each frame also goes out on agent/joint_states (sensor_msgs/JointState) at the frame's
display time, stamped with it, for robots that stream positions. A malformed turn (no frames, frames without
50 expression values, stamps that do not match fps, fps outside [1, 1000], zero stamp) is dropped and counted;
non-finite motion values are held by the limiter and counted. /diagnostics: status `timar/head_bridge`.

Watchdog: when no turn arrives for `watchdog_timeout` s after the last point of the last trajectory (the agent
stopped, died, or was deactivated), the bridge publishes one more trajectory that eases the head from where
it stands to the neutral pose over `watchdog_ease` s (TrajectoryPlanner.plan_neutral: within the position,
velocity and acceleration limits), logs it once and counts it (`watchdog_trips`). When turns come again they
continue from the eased pose (cut into the ease if it is still under way), within the same limits.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from timar_msgs.msg import HeadMotionTurn
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from timar_model.runtime.robot_head import HeadJointMapper, JointLimits, JointMapping, default_head_mapping
from timar_model.runtime.trajectory import PlannedTrajectory, TrajectoryPlanner

from . import qos
from .convert import motion_from_msg, sec_to_stamp, stamp_to_sec
from .params import Param, declare_params
from .spin import run_node

FPS_RANGE = (1.0, 1000.0)
DIAGNOSTICS_PERIOD = 1.0  # s
LIMIT_KEYS = ("lower", "upper", "max_velocity", "max_acceleration")


def joint_defaults() -> dict[str, list]:
    """Per-joint parameter defaults of the head: robot_head.default_head_mapping() as parameter lists."""
    joints = default_head_mapping()
    return {
        "joint_names": [j.name for j in joints],
        "sources": [j.source for j in joints],
        "signs": [float(j.sign) for j in joints],
        "gains": [float(j.gain) for j in joints],
        "offsets": [float(j.offset) for j in joints],
        "lower": [float(j.limits.lower) for j in joints],
        "upper": [float(j.limits.upper) for j in joints],
        "max_velocity": [float(j.limits.max_velocity) for j in joints],
        "max_acceleration": [float(j.limits.max_acceleration) for j in joints],
    }


_D = joint_defaults()
LIMIT_PARAMS = (
    Param("lower", _D["lower"], "rad per joint: lowest position", change="live"),
    Param("upper", _D["upper"], "rad per joint: highest position", change="live"),
    Param("max_velocity", _D["max_velocity"], "rad/s per joint: speed limit", change="live"),
    Param("max_acceleration", _D["max_acceleration"], "rad/s^2 per joint: acceleration limit", change="live"),
)
PARAMS = (
    Param("joint_names", _D["joint_names"], "robot joint names, in the order of every published message",
          change="restart"),
    Param("sources", _D["sources"], "FLAME angle driving each joint: yaw, pitch, roll or jaw", change="restart"),
    Param("signs", _D["signs"], "+1 or -1 per joint: the joint turns with or against its FLAME angle",
          change="live"),
    Param("gains", _D["gains"], "joint angle per rad of FLAME angle, per joint", change="live"),
    Param("offsets", _D["offsets"], "rad per joint, added after sign and gain", change="live"),
    *LIMIT_PARAMS,
    Param("max_gap", 0.1, "s; a turn that starts at most this long after the previous turn's last frame "
          "continues it (velocity carried over); after a longer gap the head starts again from rest",
          range=(0.0, 10.0), change="live"),
    Param("watchdog_timeout", 0.5, "s without a new turn after the last trajectory point before the head is eased "
          "to neutral", range=(0.05, 3600.0), change="live"),
    Param("watchdog_ease", 1.0, "s; the watchdog eases the head to neutral over this long (within the limits)",
          range=(0.05, 60.0), change="live"),
)


def _floats(p: dict[str, Any], key: str, n: int) -> list[float]:
    values = [float(v) for v in p[key]]
    if len(values) != n:
        raise ValueError(f"{key} has {len(values)} entries; joint_names has {n}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{key} must be finite numbers; got {values}")
    return values


def limits_from_params(p: dict[str, Any]) -> list[JointLimits]:
    """lower / upper / max_velocity / max_acceleration lists -> one JointLimits per joint (ValueError if not)."""
    n = len(p["joint_names"])
    lo, hi, vmax, amax = (_floats(p, k, n) for k in LIMIT_KEYS)
    out = []
    for i, name in enumerate(p["joint_names"]):
        try:
            out.append(JointLimits(lo[i], hi[i], vmax[i], amax[i]))
        except ValueError as e:
            raise ValueError(f"joint {name}: {e}") from e
    return out


def mapping_from_params(p: dict[str, Any]) -> list[JointMapping]:
    """The bridge's parameters -> one JointMapping per joint; ValueError with the reason if inconsistent."""
    names = [str(n) for n in p["joint_names"]]
    n = len(names)
    if n == 0:
        raise ValueError("joint_names is empty")
    if len(set(names)) != n:
        raise ValueError(f"joint_names has duplicates: {names}")
    if len(p["sources"]) != n:
        raise ValueError(f"sources has {len(p['sources'])} entries; joint_names has {n}")
    signs, gains, offsets = (_floats(p, k, n) for k in ("signs", "gains", "offsets"))
    if any(s not in (-1.0, 1.0) for s in signs):
        raise ValueError(f"signs must be +1 or -1; got {signs}")
    limits = limits_from_params(p)
    return [JointMapping(name, str(p["sources"][i]), signs[i], gains[i], offsets[i], limits[i])
            for i, name in enumerate(names)]


def turn_from_msg(msg: HeadMotionTurn) -> tuple[np.ndarray, float, float]:
    """HeadMotionTurn -> (motion (F, 56) float64, display time of frames[0] s, fps); ValueError if malformed."""
    fps = float(msg.fps)
    if not (math.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise ValueError(f"fps {fps} outside [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}]")
    n = len(msg.frames)
    if n == 0:
        raise ValueError("no frames")
    start = stamp_to_sec(msg.header.stamp)
    if start == 0.0:
        raise ValueError("header.stamp is zero (no display time)")
    motion = np.stack([motion_from_msg(f) for f in msg.frames]).astype(np.float64)
    stamps = np.array([stamp_to_sec(f.header.stamp) for f in msg.frames])
    expected = start + np.arange(n) / fps
    off = np.abs(stamps - expected)
    if off.max() > 0.25 / fps:
        i = int(np.argmax(off))
        raise ValueError(f"frame {i} is stamped {stamps[i]:.4f} s, expected {expected[i]:.4f} s at {fps:g} fps")
    return motion, start, fps


def _duration(t: float) -> Duration:
    ns = int(round(t * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def trajectory_msg(plan: PlannedTrajectory, frame_id: str = "") -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(plan.names))
    msg.header.stamp = sec_to_stamp(plan.start)
    msg.header.frame_id = frame_id
    msg.points = [
        JointTrajectoryPoint(
            positions=plan.positions[i].tolist(), velocities=plan.velocities[i].tolist(),
            accelerations=plan.accelerations[i].tolist(), time_from_start=_duration(float(tfs)),
        )
        for i, tfs in enumerate(plan.time_from_start)
    ]
    return msg


class HeadBridge(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("head_bridge", **kwargs)
        self.p = declare_params(self, PARAMS, on_change=self._on_change)
        self.planner = TrajectoryPlanner(HeadJointMapper(mapping_from_params(self.p.as_dict())), self.p["max_gap"])
        self.names = self.planner.names
        self.malformed = 0
        self.late_turns = 0  # turns whose first frame was already due when they arrived
        self.watchdog_trips = 0
        self._tripped = False  # the head was eased to neutral and no turn came since
        self._plan_end: float | None = None  # time of the last point of the newest trajectory
        self._fps = 0.0
        self._frame_id = ""
        self._lead: deque[float] = deque(maxlen=200)  # s from arrival to frames[0]'s display time
        self._pending: deque[tuple[float, np.ndarray, np.ndarray]] = deque()  # (time, position, velocity)
        self.pub_traj = self.create_publisher(JointTrajectory, "agent/joint_trajectory", qos.per_turn())
        self.pub_state = self.create_publisher(JointState, "agent/joint_states", qos.frames())
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self.create_subscription(HeadMotionTurn, "agent/motion_turn", self._on_turn, qos.per_turn())
        # armed for the next queued joint state only (a polling timer would cost CPU all the time)
        self._state_timer = self.create_timer(1.0, self._publish_due_states, autostart=False)
        self._watchdog_timer = self.create_timer(1.0, self._check_watchdog, autostart=False)
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        self.get_logger().info(f"joints {self.names}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_change(self, changes: dict[str, Any]) -> str | None:
        merged = {**self.p.as_dict(), **changes}
        try:
            mapper = HeadJointMapper(mapping_from_params(merged))
        except ValueError as e:
            return str(e)
        self.planner.set_mapper(mapper)
        self.planner.max_gap = float(merged["max_gap"])
        return None

    def _on_turn(self, msg: HeadMotionTurn) -> None:
        try:
            motion, start, fps = turn_from_msg(msg)
        except ValueError as e:
            self.malformed += 1
            self.get_logger().warning(f"dropped agent/motion_turn {msg.turn_index}: {e}", throttle_duration_sec=2.0)
            return
        now = self._now()
        plan = self.planner.plan(motion, start, fps, int(msg.epoch), now)
        if self._tripped:
            self._tripped = False
            self.get_logger().info(f"agent/motion_turn back (turn {msg.turn_index}): the head follows the agent "
                                   "again")
        self._fps, self._frame_id = fps, msg.header.frame_id
        self._publish_plan(plan, now)
        self._lead.append(start - now)
        if start <= now:
            self.late_turns += 1
            self.get_logger().warning(f"turn {msg.turn_index} arrived {1e3 * (now - start):.1f} ms after its "
                                      "first frame was due", throttle_duration_sec=2.0)
        if plan.nan_frames:
            self.get_logger().warning(f"turn {msg.turn_index}: {plan.nan_frames} frames with non-finite motion "
                                      "held", throttle_duration_sec=2.0)

    def _publish_plan(self, plan: PlannedTrajectory, now: float) -> None:
        """Publish the trajectory, queue its joint states and arm the watchdog for its end."""
        self.pub_traj.publish(trajectory_msg(plan, self._frame_id))
        # the plan replaces queued states from its start on (carried-over frames come back with it)
        while self._pending and self._pending[-1][0] >= plan.start:
            self._pending.pop()
        for i, t in enumerate(plan.times):
            if plan.frames[i] and (i >= plan.first_new or t > now):
                self._pending.append((float(t), plan.positions[i], plan.velocities[i]))
        self._arm_state_timer(now)
        self._plan_end = float(plan.times[-1])
        self._arm_watchdog(now)

    def _arm_watchdog(self, now: float) -> None:
        due = self._plan_end + self.p["watchdog_timeout"] - now
        self._watchdog_timer.timer_period_ns = max(int(due * 1e9), 1_000_000)
        self._watchdog_timer.reset()

    def _check_watchdog(self) -> None:
        self._watchdog_timer.cancel()
        if self._plan_end is None or self._tripped:
            return
        now = self._now()
        silent = now - self._plan_end
        if silent < self.p["watchdog_timeout"]:  # a turn came meanwhile, or the clock moved back
            self._arm_watchdog(now)
            return
        ease = self.p["watchdog_ease"]
        plan = self.planner.plan_neutral(now + 1.0 / self._fps, self._fps, ease, now)
        if plan is None:
            return
        self._tripped = True
        self.watchdog_trips += 1
        self.get_logger().warning(f"watchdog: no agent/motion_turn for {silent:.2f} s after the last trajectory "
                                  f"point; easing the head to neutral over {ease:g} s")
        self._publish_plan(plan, now)
        self._watchdog_timer.cancel()  # once per silence: the next turn re-arms it

    def _arm_state_timer(self, now: float) -> None:
        """Wake up when the next queued joint state is due (at once if it is due already)."""
        if not self._pending:
            self._state_timer.cancel()
            return
        self._state_timer.timer_period_ns = max(int((self._pending[0][0] - now) * 1e9), 100_000)
        self._state_timer.reset()

    def _publish_due_states(self) -> None:
        now = self._now()
        while self._pending and self._pending[0][0] <= now:
            t, pos, vel = self._pending.popleft()
            js = JointState(name=self.names, position=pos.tolist(), velocity=vel.tolist())
            js.header.stamp = sec_to_stamp(t)
            self.pub_state.publish(js)
        self._arm_state_timer(now)

    def _publish_diagnostics(self) -> None:
        pl = self.planner
        lead = np.array(self._lead) if self._lead else np.full(1, np.nan)
        values: dict[str, Any] = {
            "turns": pl.turns,
            "malformed_turns": self.malformed,
            "late_turns": self.late_turns,
            "nan_frames": pl.nan_frames,
            "discontinuities": pl.discontinuities,
            "epoch_changes": pl.epoch_changes,
            "clamped_targets": pl.limiter.clamped,
            "rewinds": pl.rewinds,
            "watchdog_trips": self.watchdog_trips,
            "watchdog_active": int(self._tripped),
            "lead_ms_min": 1e3 * float(np.min(lead)),
            "lead_ms_median": 1e3 * float(np.median(lead)),
        }
        st = DiagnosticStatus(name="timar/head_bridge", hardware_id="timar")
        ok = self.malformed == 0 and self.late_turns == 0 and not self._tripped
        st.level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
        st.message = ("ok" if ok else "agent silent: head eased to neutral" if self._tripped
                      else "malformed or late turns")
        st.values = [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


def main(args: list[str] | None = None) -> None:
    run_node(HeadBridge, args)


if __name__ == "__main__":
    main()
