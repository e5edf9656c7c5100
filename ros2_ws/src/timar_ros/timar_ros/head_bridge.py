"""agent/head_motion -> neck (yaw, pitch, roll) + jaw joint commands within position/velocity/accel limits.

Every frame goes through HeadJointMapper (configurable axis mapping, sign, gain, offset) and RateLimiter
(limits never exceeded, NaN input holds the last target). Each frame is published as sensor_msgs/JointState
(agent/joint_states) and each complete turn as one trajectory_msgs/JointTrajectory (agent/joint_trajectory)
whose points are the limited frames at i / fps from the turn's first display stamp.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from sensor_msgs.msg import JointState
from timar_msgs.msg import HeadMotion
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from timar_model.runtime.robot_head import HeadJointMapper, JointLimits, JointMapping, RateLimiter

from .convert import motion_from_msg, sec_to_stamp, stamp_to_sec
from .params import declare
from .spin import run_node


def mapping_from_params(p: dict) -> list[JointMapping]:
    keys = ("sources", "signs", "gains", "offsets", "lower", "upper", "max_velocity", "max_acceleration")
    n = len(p["joint_names"])
    for k in keys:
        if len(p[k]) != n:
            raise ValueError(f"head_bridge.{k} has {len(p[k])} entries; head_bridge.joint_names has {n}")
    return [
        JointMapping(
            name, p["sources"][i], float(p["signs"][i]), float(p["gains"][i]), float(p["offsets"][i]),
            JointLimits(
                float(p["lower"][i]), float(p["upper"][i]), float(p["max_velocity"][i]),
                float(p["max_acceleration"][i]),
            ),
        )
        for i, name in enumerate(p["joint_names"])
    ]


class HeadBridge(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("head_bridge", **kwargs)
        self.p = declare(self, "head_bridge")
        self.mapper = HeadJointMapper(mapping_from_params(self.p))
        self.limiter = RateLimiter(self.mapper.limits)
        self.dt = 1.0 / float(self.p["fps"])
        self.pub_state = self.create_publisher(JointState, "agent/joint_states", 50)
        self.pub_traj = self.create_publisher(JointTrajectory, "agent/joint_trajectory", 10)
        self.create_subscription(HeadMotion, "agent/head_motion", self._on_motion, 100)
        self._turn: int | None = None
        self._points: list[JointTrajectoryPoint] = []
        self._turn_stamp = 0.0
        self.dropped = 0
        self.get_logger().info(f"joints {self.mapper.names}")

    def _flush(self) -> None:
        if self._points:
            msg = JointTrajectory(joint_names=self.mapper.names, points=self._points)
            msg.header.stamp = sec_to_stamp(self._turn_stamp)
            self.pub_traj.publish(msg)
        self._points = []

    def _on_motion(self, msg: HeadMotion) -> None:
        try:
            motion = motion_from_msg(msg)
        except ValueError as e:
            self.dropped += 1
            self.get_logger().warn(f"dropped agent/head_motion: {e}", throttle_duration_sec=2.0)
            return
        target = self.mapper.targets(motion)  # NaN stays NaN -> the limiter holds the last target
        st = self.limiter.step(target, self.dt)
        stamp = stamp_to_sec(msg.header.stamp)
        js = JointState(name=self.mapper.names, position=st.position.tolist(), velocity=st.velocity.tolist())
        js.header = msg.header
        self.pub_state.publish(js)
        if msg.turn_index != self._turn:
            self._flush()
            self._turn, self._turn_stamp = msg.turn_index, stamp
        t = stamp - self._turn_stamp
        sec = int(np.floor(t))
        self._points.append(
            JointTrajectoryPoint(
                positions=st.position.tolist(), velocities=st.velocity.tolist(),
                accelerations=st.acceleration.tolist(),
                time_from_start=Duration(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000),
            )
        )
        if msg.frame_index == int(round(1.0 / self.dt)) - 1:
            self._flush()
            self._turn = None


def main(args: list[str] | None = None) -> None:
    run_node(HeadBridge, args)

if __name__ == "__main__":
    main()
