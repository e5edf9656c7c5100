"""`timar boundary`: turn-boundary steps vs steps inside turns, on a synthetic bag whose turns jump at every
boundary (joint states from the real TrajectoryPlanner, as the head bridge publishes them) and on predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from timar_model.eval import boundary
from timar_model.runtime.robot_head import default_head_mapping
from timar_model.runtime.trajectory import TrajectoryPlanner

T0, FPS, TURNS = 100.0, 25, 4
JUMP = 0.3  # rad: yaw and jaw jump this much from one turn to the next
STEP = 0.004  # rad per frame inside a turn


def turn_motion(k: int) -> np.ndarray:
    i = np.arange(FPS)
    yaw = k * JUMP * (-1) ** k + STEP * i  # every turn starts 0.3 rad (and more) away from where the last ended
    m = np.zeros((FPS, 56))
    m[:, 53:56] = Rotation.from_euler("YXZ", np.stack([yaw, 0 * yaw, 0 * yaw], axis=1)).as_rotvec()
    m[:, 50] = 0.05 + (k % 2) * JUMP + STEP * i  # jaw opening about x
    return m


def write_bag(path: Path, epochs: list[int]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    ts = timar_typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    HeadMotion, Turn, JointState = (T["timar_msgs/msg/HeadMotion"], T["timar_msgs/msg/HeadMotionTurn"],
                                    T["sensor_msgs/msg/JointState"])

    def ns(t: float) -> int:
        return int(round(t * 1e9))

    def hdr(t: float):
        return Header(stamp=Time(sec=ns(t) // 10**9, nanosec=ns(t) % 10**9), frame_id="x")

    planner = TrajectoryPlanner()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_turn = w.add_connection("/agent/motion_turn", "timar_msgs/msg/HeadMotionTurn", typestore=ts)
        c_js = w.add_connection("/agent/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        msgs = []
        for k, epoch in enumerate(epochs):
            start = T0 + k
            m = turn_motion(k).astype(np.float32)
            frames = [HeadMotion(header=hdr(start + i / FPS), expression=m[i, :50].copy(), jaw_pose=m[i, 50:53].copy(),
                                 head_rotation=m[i, 53:56].copy(), turn_index=k, frame_index=i) for i in range(FPS)]
            msgs.append((start - 0.2, c_turn, Turn(header=hdr(start), turn_index=k, epoch=epoch, fps=25.0,
                                                   frames=frames)))
            plan = planner.plan(m.astype(np.float64), start, FPS, epoch)
            for i in range(plan.first_new, plan.times.size):
                t = float(plan.times[i])
                msgs.append((t, c_js, JointState(header=hdr(t), name=plan.names, position=plan.positions[i].copy(),
                                                  velocity=plan.velocities[i].copy(), effort=np.zeros(0))))
        for t, conn, msg in sorted(msgs, key=lambda r: r[0]):
            w.write(conn, ns(t), ts.serialize_cdr(msg, conn.msgtype))


def test_motion_steps_measures_rotation_jaw_and_expression():
    m = np.zeros((3, 56))
    m[1, 53:56] = Rotation.from_euler("YXZ", [0.1, 0.0, 0.0]).as_rotvec()
    m[2, 53:56] = Rotation.from_euler("YXZ", [0.1, 0.2, 0.0]).as_rotvec()
    m[2, 50], m[1, 7] = 0.3, -0.5
    s = boundary.motion_steps(m)
    np.testing.assert_allclose(s["head_rad"], [0.1, 0.2], atol=1e-9)  # geodesic angle of each step
    np.testing.assert_allclose(s["jaw_rad"], [0.0, 0.3], atol=1e-9)
    np.testing.assert_allclose(s["exp"], [0.5, 0.5])
    inside, bnd = boundary.step_kinds(np.array([0, 0, 1, 1, 3, 3]))
    assert inside.tolist() == [True, False, True, False, True] and bnd.tolist() == [False, True, False, False, False]


def test_bag_report_raw_jump_and_what_the_bridge_made_of_it(tmp_path):
    write_bag(tmp_path / "bag", epochs=[0, 0, 0, 0, 1])  # the last turn is of a new timeline: not a boundary
    r = boundary.boundary_report(tmp_path / "bag")
    assert r["turns"] == 5 and r["boundaries"] == 3 and r["frames"] == 125
    head, jaw = r["motion"]["head_rad"], r["motion"]["jaw_rad"]
    assert head["inside"]["max"] == pytest.approx(STEP, abs=1e-6) and head["boundary"]["n"] == 3
    assert head["boundary"]["max"] > JUMP and jaw["boundary"]["max"] > JUMP - 24 * STEP
    assert r["joint_targets_rad_per_frame"]["neck_yaw"]["boundary"]["max"] > JUMP
    c = r["commanded"]["rad_per_frame"]
    vlim = {j.name: j.limits.max_velocity / FPS for j in default_head_mapping()}
    assert r["commanded"]["boundaries"] == 4  # joint states are continuous in time, also into the new epoch
    for name in ("neck_yaw", "jaw"):
        assert c[name]["boundary"]["max"] <= vlim[name] * (1 + 1e-9)  # the limiter caps the jump ...
        assert c[name]["boundary"]["max"] > 2 * STEP  # ... moving towards the new turn as fast as it may
    text = boundary.format_report(r)
    assert "4 turn boundaries" not in text and "3 turn boundaries" in text and "commanded by the head bridge" in text


def test_cli_on_predictions_writes_json(tmp_path, capsys):
    pred = np.concatenate([turn_motion(k) for k in range(3)] + [np.zeros((7, 56))]).astype(np.float32)
    (tmp_path / "n0").mkdir()
    np.save(tmp_path / "n0" / "clip_speaker1.npy", pred)
    np.save(tmp_path / "n0" / "clip_speaker2.npy", pred[:50])
    args = argparse.Namespace(path=str(tmp_path), json=str(tmp_path / "r.json"))
    assert boundary.run(args) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["frames"] == 75 + 50 and r["boundaries"] == 2 + 1  # trailing partial turn dropped; files apart
    assert r["motion"]["head_rad"]["boundary"]["max"] > JUMP
    assert "predictions" in capsys.readouterr().out


def test_bad_paths_are_one_line_errors(tmp_path):
    from timar_model.errors import UserError

    with pytest.raises(FileNotFoundError):
        boundary.boundary_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .npy predictions"):
        boundary.boundary_report(tmp_path / "empty")
    np.save(tmp_path / "bad.npy", np.zeros((10, 3)))
    with pytest.raises(UserError, match="expected a"):
        boundary.boundary_report(tmp_path / "bad.npy")
