"""A stand-in for a ros2_control joint_trajectory_controller driving a simulated head.

agent/joint_trajectory -> TrajectoryFollower (the controller: points due before arrival dropped, replacement
from the new trajectory's start time or at receipt, cubic / linear interpolation, hold) -> the reference at
every control tick -> ServoActuator (each joint a critically damped second-order position servo of
`bandwidth` Hz within the joint limits). At `rate` Hz it publishes sim_head/joint_states (where the head is)
and sim_head/reference (what the controller commands), both sensor_msgs/JointState stamped with the tick's
time. /diagnostics, status `timar/sim_head`: trajectories received, rejected (nothing left that was not yet
due) and malformed, points dropped as already due on arrival, and the tracking error (reference - position)
since the first point of the first trajectory, RMS and max per joint, rad.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from timar_model.runtime.trajectory import REPLACEMENT, ServoActuator, Trajectory, TrajectoryFollower

from . import qos
from .convert import sec_to_stamp, stamp_to_sec
from .head_bridge import joint_defaults, limits_from_params
from .params import Param, declare_params
from .spin import run_node

DIAGNOSTICS_PERIOD = 1.0  # s
MAX_STEP = 0.5  # s; a longer pause of the control loop is integrated as this long

_D = joint_defaults()
PARAMS = (
    Param("joint_names", _D["joint_names"], "joints of the simulated head; a trajectory must name them all "
          "(any order, other joints ignored)", change="restart"),
    Param("lower", _D["lower"], "rad per joint: hard stop", change="restart"),
    Param("upper", _D["upper"], "rad per joint: hard stop", change="restart"),
    Param("max_velocity", _D["max_velocity"], "rad/s per joint: the servo's speed limit", change="restart"),
    Param("max_acceleration", _D["max_acceleration"], "rad/s^2 per joint: the servo's acceleration limit",
          change="restart"),
    Param("bandwidth", 12.0, "Hz; natural frequency of each joint's critically damped position servo",
          range=(0.1, 200.0), change="live"),
    Param("rate", 100.0, "Hz; control loop: sample the trajectory, step the servos, publish",
          range=(1.0, 1000.0), change="restart"),
    Param("replacement", "splice", "how a new trajectory takes over: splice = from its start time on (ROS 1 "
          "trajectory replacement), now = at receipt (the released ros2_control joint_trajectory_controller)",
          choices=REPLACEMENT, change="restart"),
)


def _seconds(d) -> float:
    return d.sec + d.nanosec * 1e-9


def trajectory_from_msg(msg: JointTrajectory, names: list[str]) -> Trajectory:
    """JointTrajectory -> Trajectory in the order of `names`; ValueError if a joint is missing or sizes differ."""
    if not msg.points:
        raise ValueError("no points")
    order = list(msg.joint_names)
    missing = [n for n in names if n not in order]
    if missing:
        raise ValueError(f"joints {missing} missing from {order}")
    idx = [order.index(n) for n in names]
    m = len(order)
    if any(len(pt.positions) != m for pt in msg.points):
        raise ValueError(f"every point needs {m} positions")
    positions = np.array([pt.positions for pt in msg.points], dtype=np.float64)[:, idx]
    nv = {len(pt.velocities) for pt in msg.points}
    if nv == {m}:
        velocities = np.array([pt.velocities for pt in msg.points], dtype=np.float64)[:, idx]
    elif nv == {0}:
        velocities = None
    else:
        raise ValueError(f"velocities must be given for all {m} joints of every point or for none")
    tfs = np.array([_seconds(pt.time_from_start) for pt in msg.points])
    return Trajectory(stamp_to_sec(msg.header.stamp), tfs, positions, velocities)


class SimHead(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_head", **kwargs)
        self.p = declare_params(self, PARAMS, on_change=self._on_change)
        self.names = [str(n) for n in self.p["joint_names"]]
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"sim_head: joint_names must be distinct and not empty; got {self.names}")
        limits = limits_from_params(self.p.as_dict())
        lower = np.array([lim.lower for lim in limits])
        upper = np.array([lim.upper for lim in limits])
        start = np.clip(np.zeros(len(limits)), lower, upper)
        self.follower = TrajectoryFollower(start, replacement=self.p["replacement"])
        self.actuator = ServoActuator(limits, bandwidth=self.p["bandwidth"], position=start)
        self.malformed = 0
        self._sq = np.zeros(len(limits))  # sum of squared tracking errors, rad^2
        self._max = np.zeros(len(limits))  # max |tracking error|, rad
        self._samples = 0
        self._last_tick: float | None = None
        self._ref = self.follower.sample(0.0)
        self.pub_state = self.create_publisher(JointState, "sim_head/joint_states", qos.frames())
        self.pub_ref = self.create_publisher(JointState, "sim_head/reference", qos.frames())
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self.create_subscription(JointTrajectory, "agent/joint_trajectory", self._on_trajectory, qos.per_turn())
        self.create_timer(1.0 / self.p["rate"], self._tick)
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        self.get_logger().info(f"joints {self.names}, servo {self.p['bandwidth']:g} Hz at {self.p['rate']:g} Hz, "
                               f"replacement {self.p['replacement']}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_change(self, changes: dict[str, Any]) -> str | None:
        if "bandwidth" in changes:
            self.actuator.set_bandwidth(float(changes["bandwidth"]))
        return None

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            tr = trajectory_from_msg(msg, self.names)
        except ValueError as e:
            self.malformed += 1
            self.get_logger().warning(f"ignored agent/joint_trajectory: {e}", throttle_duration_sec=2.0)
            return
        dropped = self.follower.dropped_points
        if self.follower.set(tr, received_at=self._now()) == 0:
            self.get_logger().warning("ignored a trajectory whose points were all due before it arrived",
                                      throttle_duration_sec=2.0)
        elif self.follower.dropped_points > dropped:
            self.get_logger().warning(f"dropped {self.follower.dropped_points - dropped} points that were due "
                                      "before the trajectory arrived", throttle_duration_sec=2.0)

    def _joint_state(self, t: float, position: np.ndarray, velocity: np.ndarray) -> JointState:
        js = JointState(name=self.names, position=position.tolist(), velocity=velocity.tolist())
        js.header.stamp = sec_to_stamp(t)
        return js

    def _tick(self) -> None:
        now = self._now()
        last, self._last_tick = self._last_tick, now
        if last is not None and now > last:  # the servo moves over [last, now] towards the reference at last
            self.actuator.step(self._ref[0], self._ref[1], min(now - last, MAX_STEP))
        ref_p, ref_v = self.follower.sample(now)
        self._ref = (ref_p, ref_v)
        pos, vel = self.actuator.position, self.actuator.velocity
        self.pub_state.publish(self._joint_state(now, pos, vel))
        self.pub_ref.publish(self._joint_state(now, ref_p, ref_v))
        first = self.follower.first_point_time
        if first is not None and now >= first:
            err = ref_p - pos
            self._sq += err * err
            self._max = np.maximum(self._max, np.abs(err))
            self._samples += 1

    def _publish_diagnostics(self) -> None:
        f = self.follower
        n = max(self._samples, 1)
        rms = np.sqrt(self._sq / n)
        values: dict[str, Any] = {
            "trajectories_received": f.received + self.malformed,
            "trajectories_rejected": f.rejected,
            "trajectories_malformed": self.malformed,
            "points_dropped_late": f.dropped_points,
            "tracking_samples": self._samples,
            "tracking_rms_rad": float(math.sqrt(self._sq.sum() / (n * len(self.names)))),
            **{f"tracking_rms_rad.{name}": float(rms[i]) for i, name in enumerate(self.names)},
            **{f"tracking_max_rad.{name}": float(self._max[i]) for i, name in enumerate(self.names)},
            "bandwidth_hz": float(self.actuator.bandwidth),
            "replacement": f.replacement,
        }
        st = DiagnosticStatus(name="timar/sim_head", hardware_id="timar")
        ok = f.dropped_points == 0 and f.rejected == 0 and self.malformed == 0
        st.level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
        st.message = "ok" if ok else "late points or rejected trajectories"
        st.values = [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


def main(args: list[str] | None = None) -> None:
    run_node(SimHead, args)


if __name__ == "__main__":
    main()
