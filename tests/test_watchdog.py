"""The head bridge's watchdog: when the agent stops sending turns, the head is eased to neutral within the joint
limits, once; when turns come again the head follows them from where it is, within the same limits.

Pure: TrajectoryPlanner.plan_neutral and the planner's cut into a plan that is still under way.
Over DDS: the head_bridge node (its own process) gets turns from a driver process, then nothing, then turns
again; the driver records agent/joint_trajectory, agent/joint_states and /diagnostics.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from timar_model.runtime.robot_head import default_head_mapping
from timar_model.runtime.trajectory import TrajectoryPlanner

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
FPS = 25.0
DT = 1.0 / FPS
LIMITS = [j.limits for j in default_head_mapping()]
LOWER = np.array([lim.lower for lim in LIMITS])
UPPER = np.array([lim.upper for lim in LIMITS])
VMAX = np.array([lim.max_velocity for lim in LIMITS])
AMAX = np.array([lim.max_acceleration for lim in LIMITS])


def moving_turn(k: int, amp: float = 1.0) -> np.ndarray:
    """A turn of motion that swings the head and the jaw (the head is far from neutral at times)."""
    from scipy.spatial.transform import Rotation

    t = (np.arange(25) + 25 * k) / FPS
    ypr = amp * np.stack([0.6 * np.sin(2 * np.pi * 0.4 * t) + 0.1, 0.3 * np.sin(2 * np.pi * 0.7 * t),
                          0.2 * np.sin(2 * np.pi * 0.3 * t)], axis=1)
    m = np.zeros((25, 56))
    m[:, 53:56] = Rotation.from_euler("YXZ", ypr).as_rotvec()
    m[:, 50] = 0.25 + 0.15 * np.sin(2 * np.pi * 1.5 * t)
    return m


def check_within_limits(times: np.ndarray, positions: np.ndarray, rtol: float = 1e-6) -> None:
    """Positions at (possibly uneven) times obey the position, velocity and acceleration limits, also in their
    finite differences (the limiter steps with the actual spacing). rtol: absolute stamps as float seconds
    (~1.8e9 s) resolve 2.4e-7 s, a relative error of up to ~1e-5 in a second difference over 40 ms."""
    assert np.all(positions >= LOWER - 1e-9) and np.all(positions <= UPPER + 1e-9)
    dt = np.diff(times)[:, None]
    v = np.diff(positions, axis=0) / dt
    assert np.all(np.abs(v) <= VMAX * (1 + rtol)), np.abs(v).max(axis=0)
    a = np.diff(v, axis=0) / dt[1:]
    assert np.all(np.abs(a) <= AMAX * (1 + rtol)), np.abs(a).max(axis=0)


def test_plan_neutral_eases_from_rest_to_neutral_within_limits():
    planner = TrajectoryPlanner()
    assert planner.plan_neutral(1.0, FPS, 1.0) is None  # no turn yet: nothing to ease from
    plans = [planner.plan(moving_turn(k), float(k), FPS) for k in range(3)]
    last = plans[-1]
    assert np.abs(last.positions[-1] - planner.neutral_position()).max() > 0.1  # far from neutral
    start = float(last.times[-1]) + 0.5 + DT  # the watchdog fires 0.5 s after the last point
    neutral = planner.plan_neutral(start, FPS, ease=1.0, now=start - DT)
    assert not neutral.continuous and planner.neutral_plans == 1
    # from rest where the controller holds the end of the last trajectory (no hold point: it would be due now)
    assert neutral.first_new == 0 and neutral.frames.all()
    assert np.all(np.abs(neutral.positions[0] - last.positions[-1]) <= AMAX * DT * DT * (1 + 1e-9))
    np.testing.assert_allclose(neutral.positions[-1], planner.neutral_position(), atol=1e-9)
    assert np.all(np.abs(neutral.velocities[-1]) < 1e-6)  # at rest there
    assert neutral.times[-1] - neutral.times[0] < 1.0 + 2.0  # the ease, then at most `settle` s
    check_within_limits(np.r_[start - DT, neutral.times], np.vstack([last.positions[-1], neutral.positions]))
    assert np.all(np.abs(neutral.velocities) <= VMAX) and np.all(np.abs(neutral.accelerations) <= AMAX * (1 + 1e-9))
    # the ease is gradual: no step larger than the linear ease's own (distance / ease frames) plus what the
    # limiter adds catching up
    steps = np.abs(np.diff(neutral.positions, axis=0))
    assert np.all(steps <= np.abs(last.positions[-1] - planner.neutral_position()) / 25 + AMAX * DT * DT + 1e-9)


@pytest.mark.parametrize("resume_after", [0.3, 2.5])
def test_turns_after_the_watchdog_continue_from_the_head_within_limits(resume_after):
    """Resuming while the ease is under way cuts into it; after it, the head starts from rest at neutral."""
    planner = TrajectoryPlanner()
    for k in range(2):
        planner.plan(moving_turn(k), float(k), FPS)
    start_neutral = 2.0 + 0.5
    neutral = planner.plan_neutral(start_neutral, FPS, ease=1.0, now=start_neutral - DT)
    resume = start_neutral + resume_after
    turns = [planner.plan(moving_turn(k, amp=0.5), resume + i, FPS, now=resume - 0.3)
             for i, k in enumerate(range(5, 7))]
    first = turns[0]
    if resume_after < 1.0:  # cut into the ease: continues from the limiter's state there
        assert first.continuous and planner.rewinds == 1
        kept = neutral.times < resume - DT / 2
    else:
        assert not first.continuous and planner.rewinds == 0
        kept = np.ones(neutral.times.size, bool)
    t = np.concatenate([neutral.times[kept], *[p.times[p.first_new:] for p in turns]])
    p = np.concatenate([neutral.positions[kept], *[p.positions[p.first_new:] for p in turns]])
    if resume_after >= 1.0:  # the hold point of the new turn: at rest at neutral, a frame before it
        t = np.concatenate([t[: kept.sum()], [first.times[0]], t[kept.sum():]])
        p = np.concatenate([p[: kept.sum()], first.positions[:1], p[kept.sum():]])
    check_within_limits(t, p)


# ------------------------------------------------------------------------------------------- over DDS
DRIVER = r"""
import json, sys, time
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from timar_msgs.msg import HeadMotionTurn
from trajectory_msgs.msg import JointTrajectory
from timar_ros import qos
from timar_ros.convert import head_motion_msg, sec_to_stamp, stamp_to_sec
sys.path.insert(0, sys.argv[2])
from test_watchdog import moving_turn

out = sys.argv[1]
plan = json.loads(sys.argv[3])  # [[k, start offset s], ...] and the end offset
rclpy.init()
node = rclpy.create_node("driver")
now = lambda: node.get_clock().now().nanoseconds * 1e-9
got = {"traj": [], "states": [], "diag": [], "starts": []}
sec = lambda d: d.sec + d.nanosec * 1e-9
node.create_subscription(JointTrajectory, "agent/joint_trajectory", lambda m: got["traj"].append(
    {"recv": now(), "stamp": stamp_to_sec(m.header.stamp), "tfs": [sec(p.time_from_start) for p in m.points],
     "pos": [list(p.positions) for p in m.points], "vel": [list(p.velocities) for p in m.points],
     "acc": [list(p.accelerations) for p in m.points]}), qos.per_turn())
node.create_subscription(JointState, "agent/joint_states", lambda m: got["states"].append(
    {"stamp": stamp_to_sec(m.header.stamp), "pos": list(m.position)}), qos.frames())
def on_diag(m):
    for st in m.status:
        if st.name == "timar/head_bridge":
            got["diag"].append({"t": now(), "level": int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                else int(st.level), "values": {kv.key: kv.value for kv in st.values}})
node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos.diagnostics())
pub = node.create_publisher(HeadMotionTurn, "agent/motion_turn", qos.per_turn())
def spin_until(t):
    while now() < t:
        rclpy.spin_once(node, timeout_sec=0.002)
deadline = time.monotonic() + 60
while node.count_subscribers("agent/motion_turn") < 1 or node.count_publishers("agent/joint_states") < 1:
    rclpy.spin_once(node, timeout_sec=0.05)
    if time.monotonic() > deadline:
        sys.exit("head_bridge did not come up")
spin_until(now() + 1.0)
t0 = now() + 1.0
for k, offset in plan["turns"]:
    start = t0 + offset
    spin_until(start - 0.3)  # published 0.3 s ahead, as the agent does
    msg = HeadMotionTurn(turn_index=k, epoch=0, fps=25.0)
    msg.header.stamp = sec_to_stamp(start)
    m = moving_turn(k).astype(np.float32)
    msg.frames = [head_motion_msg(m[i], start + i / 25.0, "agent_head", k, i) for i in range(25)]
    pub.publish(msg)
    got["starts"].append(start)
spin_until(t0 + plan["end"])
# a starved machine may process late: wait (bounded) until the bridge has planned every turn and eased again
deadline = time.monotonic() + 60
while not any(d["values"].get("turns") == str(len(plan["turns"])) and d["values"].get("watchdog_active") == "1"
              and d["t"] > t0 + plan["end"] for d in got["diag"]) and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
spin_until(now() + 1.5)  # the eased joint states
json.dump(got, open(out, "w"))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
def test_watchdog_eases_the_head_to_neutral_over_dds_and_turns_resume(ros_domain_id, tmp_path):
    """4 turns, then silence (the watchdog fires 0.5 s after the last point, at about t0 + 4.46 s, and eases over
    3 s), then 2 turns from t0 + 6.5 s (while the ease is under way), then silence again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    schedule = {"turns": [[0, 0.0], [1, 1.0], [2, 2.0], [3, 3.0], [4, 6.5], [5, 7.5]], "end": 12.0}
    (tmp_path / "driver.py").write_text(DRIVER)
    bridge = subprocess.Popen(
        ["bash", "-c", f"source {ENV_SH} && exec python -m timar_ros.head_bridge --ros-args "
                       "-p watchdog_timeout:=0.5 -p watchdog_ease:=3.0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        driver = subprocess.run(
            ["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'driver.py'} {tmp_path / 'out.json'} "
                           f"{Path(__file__).parent} '{json.dumps(schedule)}'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        bridge.send_signal(2)
        try:
            log = bridge.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            bridge.kill()
            log = bridge.communicate()[0]
    assert driver.returncode == 0, driver.stdout + driver.stderr + log
    assert bridge.returncode == 0, log
    got = json.loads((tmp_path / "out.json").read_text())
    starts = got["starts"]
    traj = sorted(got["traj"], key=lambda tr: tr["recv"])
    kinds = []  # the turn index, or "watchdog" for a trajectory that holds no turn's first frame
    for tr in traj:
        times = tr["stamp"] + np.array(tr["tfs"])
        k = next((i for i, s in enumerate(starts) if np.any(np.abs(times - s) < 1e-6)), None)
        kinds.append(k if k is not None else "watchdog")
    timeline = [(kind, round(tr["stamp"] - starts[0], 3), round(tr["recv"] - starts[0], 3))
                for kind, tr in zip(kinds, traj)]
    assert [k for k in kinds if k != "watchdog"] == list(range(len(starts))), timeline
    # a silence after turn 3 and after turn 5 (on a starved machine a turn may also arrive after its points were
    # due, which is a silence too): each one logged once and counted
    trips = kinds.count("watchdog")
    assert kinds.index("watchdog") > kinds.index(3) and kinds[-1] == "watchdog" and trips >= 2, timeline
    assert kinds[kinds.index(3) + 1] == "watchdog", timeline
    assert log.count("watchdog: no agent/motion_turn") == trips, log
    assert log.count("agent/motion_turn back") == trips - 1, log
    d = got["diag"][-1]
    assert d["values"]["watchdog_trips"] == str(trips) and d["values"]["watchdog_active"] == "1" and d["level"] == 1
    neutral = np.zeros(4)  # the default mapping: offsets 0, inside every joint's limits
    for i, kind in enumerate(kinds):
        if kind != "watchdog":
            continue
        tr = traj[i]
        pos, vel, acc = (np.array(tr[key]) for key in ("pos", "vel", "acc"))
        times = tr["stamp"] + np.array(tr["tfs"])
        before = traj[i - 1]
        silence = times[0] - (before["stamp"] + before["tfs"][-1])
        assert silence >= 0.5, timeline  # never before watchdog_timeout
        np.testing.assert_allclose(pos[-1], neutral, atol=1e-9)
        # from rest where the head stopped (the first step is at most amax dt^2), within every limit
        assert np.all(np.abs(pos[0] - np.array(before["pos"][-1])) <= AMAX * DT * DT * (1 + 1e-9))
        check_within_limits(times, pos, rtol=1e-4)
        assert np.all(np.abs(vel) <= VMAX * (1 + 1e-9)) and np.all(np.abs(acc) <= AMAX * (1 + 1e-6))
        print(f"watchdog ease {i}: silence {silence:.3f} s, {times[-1] - times[0]:.2f} s to neutral from "
              f"{np.round(pos[0], 3).tolist()}, peak |v|/vmax {np.round(np.abs(vel).max(0) / VMAX, 2).tolist()}, "
              f"peak |a|/amax {np.round(np.abs(acc).max(0) / AMAX, 2).tolist()}")
    assert np.abs(np.array(traj[kinds.index(3)]["pos"][-1]) - neutral).max() > 0.05  # there was a way to go
    first_ease = traj[kinds.index(3) + 1]
    if first_ease["recv"] < starts[4] - 0.3:  # (not starved:) turn 4 came while the 3 s ease was under way
        assert first_ease["stamp"] + first_ease["tfs"][-1] > starts[4]
        assert "rewinds" in d["values"] and int(d["values"]["rewinds"]) >= 1
    # what the head was commanded frame by frame, across the turns, the eases and the resumption: within the
    # position, velocity and acceleration limits everywhere, and neutral at the end
    states = sorted(got["states"], key=lambda s: s["stamp"])
    t = np.array([s["stamp"] for s in states])
    p = np.array([s["pos"] for s in states])
    assert np.all(np.diff(t) > 0)
    check_within_limits(t, p, rtol=1e-4)
    np.testing.assert_allclose(p[-1], neutral, atol=1e-9)
