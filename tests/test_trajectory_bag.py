"""`timar eval-bag` on a synthetic bag with agent/joint_trajectory and sim_head/joint_states (no ROS needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

T0, DELAY, TURNS, LATE_TURN = 100.0, 1.12, 4, 2
NAMES = ["neck_yaw", "neck_pitch", "neck_roll", "jaw"]
OFFSET = np.array([0.01, -0.02, 0.0, 0.005])  # sim_head position = commanded + this, rad


def commanded(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The commanded joint motion at times t (N,) -> positions (N, 4) rad, velocities (N, 4) rad/s."""
    w = np.array([1.0, 1.7, 0.6, 4.0])
    amp = np.array([0.3, 0.2, 0.1, 0.1])
    return amp * np.sin(w * t[:, None]), amp * w * np.cos(w * t[:, None])


def write_bag(path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    ts = timar_typestore()
    T = ts.types
    Time, Duration, Header = T["builtin_interfaces/msg/Time"], T["builtin_interfaces/msg/Duration"], \
        T["std_msgs/msg/Header"]
    HeadMotion, JointState = T["timar_msgs/msg/HeadMotion"], T["sensor_msgs/msg/JointState"]
    Traj, Point = T["trajectory_msgs/msg/JointTrajectory"], T["trajectory_msgs/msg/JointTrajectoryPoint"]
    KeyValue, Status = T["diagnostic_msgs/msg/KeyValue"], T["diagnostic_msgs/msg/DiagnosticStatus"]
    Array = T["diagnostic_msgs/msg/DiagnosticArray"]

    def ns(t: float) -> int:
        return int(round(t * 1e9))

    def hdr(t: float):
        return Header(stamp=Time(sec=ns(t) // 10**9, nanosec=ns(t) % 10**9), frame_id="x")

    def dur(t: float):
        return Duration(sec=ns(t) // 10**9, nanosec=ns(t) % 10**9)

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_motion = w.add_connection("/agent/head_motion", "timar_msgs/msg/HeadMotion", typestore=ts)
        c_traj = w.add_connection("/agent/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", typestore=ts)
        c_sim = w.add_connection("/sim_head/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        c_diag = w.add_connection("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", typestore=ts)
        msgs = []  # (bag time, connection, message)
        for k in range(TURNS):
            start = T0 + k + DELAY
            for i in range(25):
                m = HeadMotion(header=hdr(start + i / 25), expression=np.zeros(50, np.float32),
                               jaw_pose=np.zeros(3, np.float32), head_rotation=np.zeros(3, np.float32),
                               turn_index=k, frame_index=i)
                msgs.append((start + i / 25 + 0.002, c_motion, m))
            # turn 3 also carries turn 2's last two points; turn 2 arrives 0.1 s after its first point was due
            first = start - 0.08 if k == 3 else start
            t = first + np.arange(27 if k == 3 else 25) / 25
            pos, vel = commanded(t)
            points = [Point(positions=pos[i], velocities=vel[i], accelerations=np.zeros(0), effort=np.zeros(0),
                            time_from_start=dur(t[i] - first)) for i in range(t.size)]
            recv = start + 0.1 if k == LATE_TURN else start - 0.2
            msgs.append((recv, c_traj, Traj(header=hdr(first), joint_names=NAMES, points=points)))
        # the simulated head at every commanded point (in reversed joint order), except those of the late turn
        # that were due before it arrived
        t_sim = T0 + DELAY + np.arange(25 * TURNS) / 25
        t_sim = t_sim[(t_sim < T0 + LATE_TURN + DELAY - 1e-6) | (t_sim > T0 + LATE_TURN + DELAY + 0.1)]
        pos, _ = commanded(t_sim)
        for t, p in zip(t_sim, pos + OFFSET):
            js = JointState(header=hdr(t), name=NAMES[::-1], position=p[::-1].copy(), velocity=np.zeros(0),
                            effort=np.zeros(0))
            msgs.append((t + 0.001, c_sim, js))
        diag = Array(header=hdr(T0), status=[Status(level=0, name="timar/agent", message="active",
                                                    hardware_id="timar",
                                                    values=[KeyValue(key="output_delay", value=str(DELAY))])])
        msgs.append((T0 + TURNS + 3, c_diag, diag))
        for t, conn, m in sorted(msgs, key=lambda r: r[0]):
            w.write(conn, ns(t), ts.serialize_cdr(m, conn.msgtype))


def test_eval_bag_reports_trajectory_timing_and_tracking(tmp_path):
    from timar_model.eval.bag_eval import add_arguments, evaluate, format_report, read_bag, run

    write_bag(tmp_path / "bag")
    data = read_bag(tmp_path / "bag")
    assert len(data.trajectories) == TURNS and data.sim_names == NAMES[::-1]
    r = evaluate(data)
    jt = r["joint_trajectory"]
    assert jt["messages"] == TURNS and jt["points"] == 3 * 25 + 27
    assert jt["late_points"] == 3  # the late turn's points at 0, 40 and 80 ms
    assert jt["points_before_due_share"] == pytest.approx(99 / 102)
    # first point: 200 ms ahead, late turn -100 ms, turn 3's carried point 120 ms ahead
    assert jt["first_point_lead_ms"]["median"] == pytest.approx(160.0, abs=1e-3)
    assert jt["first_point_lead_ms"]["min"] == pytest.approx(-100.0, abs=1e-3)
    # the first new point of every message is its turn's frames[0]
    assert jt["new_point_lead_ms"]["median"] == pytest.approx(200.0, abs=1e-3)
    assert jt["new_point_lead_ms"]["min"] == pytest.approx(-100.0, abs=1e-3)
    tr = r["sim_head_tracking"]
    assert tr["samples"] == 25 * TURNS - 3 and tr["trajectories_without_these_joints"] == 0
    for j, name in enumerate(NAMES):  # commanded - actual = -offset at every scored stamp
        assert tr["rms_rad"][name] == pytest.approx(abs(OFFSET[j]), abs=1e-6)
        assert tr["max_rad"][name] == pytest.approx(abs(OFFSET[j]), abs=1e-6)
    text = format_report(r)
    assert "joint trajectories: 4 messages, 97.1 % of 102 points received before due (3 late)" in text
    assert "sim_head tracking error over 97 joint states" in text and "neck_pitch" in text
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert run(ap.parse_args([str(tmp_path / "bag"), "--json", str(tmp_path / "r.json")])) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["joint_trajectory"]["late_points"] == 3 and "sim_head_tracking" in saved


def test_eval_bag_without_trajectories_has_no_trajectory_keys(tmp_path):
    from timar_model.eval.bag_eval import evaluate, format_report, read_bag

    write_bag(tmp_path / "bag")
    data = read_bag(tmp_path / "bag")
    data.sim_stamp = np.zeros(0)
    r = evaluate(data)
    assert "joint_trajectory" in r and "sim_head_tracking" not in r
    data.trajectories = []
    r = evaluate(data)
    assert "joint_trajectory" not in r and "sim_head_tracking" not in r
    assert "joint trajectories" not in format_report(r)
