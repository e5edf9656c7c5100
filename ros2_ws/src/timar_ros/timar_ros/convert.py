"""Message <-> numpy conversions shared by the timar nodes."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from timar_msgs.msg import HeadMotion

from timar_model.runtime.robot_head import axis_angle_to_quaternion, quaternion_to_axis_angle


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float) -> Time:
    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def head_motion_msg(motion56: np.ndarray, stamp: float, frame_id: str, turn: int, frame: int) -> HeadMotion:
    m = np.asarray(motion56, dtype=np.float32)
    msg = HeadMotion()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.expression = m[:50].tolist()
    msg.jaw_pose = m[50:53].tolist()
    msg.head_rotation = m[53:56].tolist()
    msg.turn_index = int(turn)
    msg.frame_index = int(frame)
    return msg


def motion_from_msg(msg: HeadMotion) -> np.ndarray:
    """HeadMotion -> (56,) float32; raises ValueError unless it holds 50 expression values."""
    exp = np.asarray(msg.expression, dtype=np.float32)
    if exp.size != 50:
        raise ValueError(f"HeadMotion: expected 50 expression coefficients, got {exp.size}")
    jaw, rot = np.asarray(msg.jaw_pose, np.float32), np.asarray(msg.head_rotation, np.float32)
    return np.concatenate([exp, jaw, rot])


def motion_from_pose(msg: PoseStamped) -> np.ndarray:
    """PoseStamped -> (56,) motion with only the head rotation set (neutral face)."""
    o = msg.pose.orientation
    m = np.zeros(56, dtype=np.float32)
    m[53:56] = quaternion_to_axis_angle(np.array([o.x, o.y, o.z, o.w]))
    return m


def pose_msg(motion56: np.ndarray, stamp: float, frame_id: str) -> PoseStamped:
    q = axis_angle_to_quaternion(np.asarray(motion56, dtype=np.float64)[53:56])
    msg = PoseStamped()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = (
        float(v) for v in q
    )
    return msg
