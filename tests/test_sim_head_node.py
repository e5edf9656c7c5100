"""head_bridge + sim_head over real DDS: turns published ahead of time arrive as trajectories before they are due,
within the joint limits, and the simulated head follows them.

A driver process publishes a malformed turn, then TURNS turns of timar_msgs/HeadMotionTurn LEAD s before their
first frame is due (as the agent does), and records agent/joint_trajectory, agent/joint_states,
sim_head/joint_states, sim_head/reference and /diagnostics into a JSON file that the test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
TURNS = 4
LEAD = 0.3  # s between a turn's publication and its first frame's display time

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up"),
]

DRIVER = r"""
import json, sys, time
import numpy as np
import rclpy
from scipy.spatial.transform import Rotation
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from timar_msgs.msg import HeadMotionTurn
from trajectory_msgs.msg import JointTrajectory
from timar_ros import qos
from timar_ros.convert import head_motion_msg, sec_to_stamp, stamp_to_sec

out, turns, lead = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("driver")
now = lambda: node.get_clock().now().nanoseconds * 1e-9
got = {"traj": [], "states": [], "sim": [], "ref": [], "diag": {}, "motions": [], "starts": []}
sec = lambda d: d.sec + d.nanosec * 1e-9

def on_traj(m):
    got["traj"].append({"recv": now(), "stamp": stamp_to_sec(m.header.stamp), "names": list(m.joint_names),
                        "tfs": [sec(p.time_from_start) for p in m.points],
                        "pos": [list(p.positions) for p in m.points], "vel": [list(p.velocities) for p in m.points],
                        "acc": [list(p.accelerations) for p in m.points]})

def js(key):
    return lambda m: got[key].append({"recv": now(), "stamp": stamp_to_sec(m.header.stamp), "names": list(m.name),
                                      "pos": list(m.position), "vel": list(m.velocity)})

def on_diag(m):
    for st in m.status:
        got["diag"][st.name] = {kv.key: kv.value for kv in st.values}

pub = node.create_publisher(HeadMotionTurn, "agent/motion_turn", qos.per_turn())
node.create_subscription(JointTrajectory, "agent/joint_trajectory", on_traj, qos.per_turn())
node.create_subscription(JointState, "agent/joint_states", js("states"), qos.frames())
node.create_subscription(JointState, "sim_head/joint_states", js("sim"), qos.frames())
node.create_subscription(JointState, "sim_head/reference", js("ref"), qos.frames())
node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos.diagnostics())

def spin_until(t):
    while now() < t:
        rclpy.spin_once(node, timeout_sec=0.002)

deadline = time.monotonic() + 60
while (node.count_subscribers("agent/motion_turn") < 1 or node.count_subscribers("agent/joint_trajectory") < 2
       or node.count_publishers("sim_head/reference") < 1 or node.count_publishers("agent/joint_states") < 1):
    rclpy.spin_once(node, timeout_sec=0.05)
    if time.monotonic() > deadline:
        sys.exit("nodes did not come up")
spin_until(now() + 1.0)

def turn_msg(start, k, fps=25.0, frame_rate=25.0):
    f = np.arange(25) + 25 * k
    t = f / 25.0
    ypr = np.stack([0.3 * np.sin(2 * np.pi * 0.4 * t), 0.15 * np.sin(2 * np.pi * 0.7 * t),
                    0.05 * np.sin(2 * np.pi * 0.3 * t)], axis=1)
    m = np.zeros((25, 56), np.float32)
    m[:, 53:56] = Rotation.from_euler("YXZ", ypr).as_rotvec()
    m[:, 50] = 0.15 + 0.1 * np.sin(2 * np.pi * 1.5 * t)
    m[:, :50] = 0.01
    msg = HeadMotionTurn(turn_index=k, epoch=0, fps=fps)
    msg.header.stamp = sec_to_stamp(start)
    msg.frames = [head_motion_msg(m[i], start + i / frame_rate, "agent_head", k, i) for i in range(25)]
    return msg, m

bad, _ = turn_msg(now() + 5.0, 99, fps=30.0)  # frames 40 ms apart but fps says 30: malformed
pub.publish(bad)
t0 = now() + 1.0
for k in range(turns):
    start = t0 + k
    spin_until(start - lead)
    msg, m = turn_msg(start, k)
    pub.publish(msg)
    got["motions"].append(m.tolist())
    got["starts"].append(start)
spin_until(t0 + turns + 1.5)
json.dump(got, open(out, "w"))
node.destroy_node()
rclpy.shutdown()
"""


def _start(cmd: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source {ENV_SH} && exec {cmd}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_head_bridge_and_sim_head(ros_domain_id, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    (tmp_path / "driver.py").write_text(DRIVER)
    bridge = _start("python -m timar_ros.head_bridge --ros-args -p watchdog_timeout:=60.0", env)  # test_watchdog.py
    sim = _start("python -m timar_ros.sim_head --ros-args -p rate:=100.0 -p bandwidth:=12.0", env)
    try:
        driver = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'driver.py'} "
                                               f"{tmp_path / 'out.json'} {TURNS} {LEAD}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        logs = []
        for proc in (bridge, sim):
            proc.send_signal(2)
            try:
                logs.append(proc.communicate(timeout=20)[0])
            except subprocess.TimeoutExpired:
                proc.kill()
                logs.append(proc.communicate()[0])
    log = "\n".join(logs)
    assert driver.returncode == 0, driver.stdout + driver.stderr + log
    assert bridge.returncode == 0 and sim.returncode == 0, log
    got = json.loads((tmp_path / "out.json").read_text())
    check_trajectories(got, log)
    check_new_frames_equal_the_offline_plan(got)
    check_joint_states(got)
    check_sim_head(got)


def check_trajectories(got: dict, log: str) -> None:
    """Every turn arrives as one trajectory before its first point is due, on one 40 ms grid, within limits."""
    from timar_ros.head_bridge import joint_defaults

    d = joint_defaults()
    lower, upper = np.array(d["lower"]), np.array(d["upper"])
    vmax, amax = np.array(d["max_velocity"]), np.array(d["max_acceleration"])
    assert len(got["traj"]) == TURNS, log  # the malformed turn made none
    assert "dropped agent/motion_turn 99" in log and "fps" in log
    for k, tr in enumerate(got["traj"]):
        assert tr["names"] == d["joint_names"]
        times = tr["stamp"] + np.array(tr["tfs"])
        assert tr["tfs"][0] == 0.0
        np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-6)
        assert tr["recv"] < times[0], f"turn {k}: arrived {tr['recv'] - times[0]:.3f} s after its first point"
        start = got["starts"][k]
        assert tr["recv"] < start - 0.5 * LEAD  # published at once, not when the turn is shown
        # after the first turn, the previous turn's points that were not due yet come first
        new = times >= start - 1e-6
        assert new.sum() == 25 and (k == 0) == (new.sum() == times.size)
        pos, vel, acc = (np.array(tr[key]) for key in ("pos", "vel", "acc"))
        assert np.all(pos >= lower - 1e-9) and np.all(pos <= upper + 1e-9)
        assert np.all(np.abs(vel) <= vmax * (1 + 1e-9)) and np.all(np.abs(acc) <= amax * (1 + 1e-6))


def check_new_frames_equal_the_offline_plan(got: dict) -> None:
    from timar_model.runtime.trajectory import TrajectoryPlanner

    planner = TrajectoryPlanner()
    for k, tr in enumerate(got["traj"]):
        plan = planner.plan(np.array(got["motions"][k], np.float32).astype(np.float64), got["starts"][k], 25.0)
        times = tr["stamp"] + np.array(tr["tfs"])
        new = times >= got["starts"][k] - 1e-6
        np.testing.assert_allclose(np.array(tr["pos"])[new], plan.positions, atol=1e-6)


def check_joint_states(got: dict) -> None:
    """agent/joint_states: every frame once, at (not before) its display time, stamped with it."""
    states = got["states"]
    assert len(states) == 25 * TURNS
    stamps = np.array([s["stamp"] for s in states])
    late = np.array([s["recv"] for s in states]) - stamps
    np.testing.assert_allclose(np.diff(stamps), 0.04, atol=1e-6)
    assert late.min() > -0.002
    assert np.median(late) < 0.02 and late.max() < 0.3


def check_sim_head(got: dict) -> None:
    """sim_head commands the received trajectories (splice replacement) and its servos follow them."""
    from timar_model.runtime.trajectory import Trajectory, TrajectoryFollower

    t0, t_end = got["starts"][0], got["starts"][-1] + 0.96
    ref = {round(s["stamp"], 6): np.array(s["pos"]) for s in got["ref"]}
    sim = [(s["stamp"], np.array(s["pos"])) for s in got["sim"] if t0 + 0.3 <= s["stamp"] <= t_end]
    assert len(sim) > 0.8 * 100 * (t_end - t0 - 0.3)  # about `rate` states per second
    err = np.array([ref[round(t, 6)] - p for t, p in sim])
    rms, mx = np.sqrt((err ** 2).mean(axis=0)), np.abs(err).max(axis=0)
    assert np.all(rms < 0.03) and np.all(mx < 0.06), (rms, mx)
    assert np.all(mx > 1e-4)  # a servo lags: the error is real
    assert np.ptp(np.array([p for _, p in sim]), axis=0).min() > 0.05  # the head moves
    f = TrajectoryFollower(np.zeros(4))
    events = sorted([(tr["recv"], 0, i) for i, tr in enumerate(got["traj"])]
                    + [(s["stamp"], 1, i) for i, s in enumerate(got["ref"])])
    worst = 0.0
    for t, kind, i in events:
        if kind == 0:
            tr = got["traj"][i]
            f.set(Trajectory(tr["stamp"], np.array(tr["tfs"]), np.array(tr["pos"]), np.array(tr["vel"])), t)
        elif t0 + 0.01 <= t <= t_end:
            worst = max(worst, float(np.abs(f.sample(t)[0] - np.array(got["ref"][i]["pos"])).max()))
    assert worst < 1e-6
    bridge, simd = got["diag"]["timar/head_bridge"], got["diag"]["timar/sim_head"]
    assert bridge["turns"] == str(TURNS) and bridge["malformed_turns"] == "1" and bridge["late_turns"] == "0"
    assert float(bridge["lead_ms_min"]) > 0.5e3 * LEAD
    assert simd["points_dropped_late"] == "0" and simd["trajectories_rejected"] == "0"
    assert simd["trajectories_received"] == str(TURNS)
    assert 0.0 < float(simd["tracking_rms_rad"]) < 0.03


LIVE_PARAMS = r"""
import rclpy
from rclpy.parameter import Parameter
from timar_ros.head_bridge import HeadBridge
from timar_ros.sim_head import SimHead
rclpy.init()
n = HeadBridge(parameter_overrides=[Parameter("max_gap", value=0.2)])
assert n.planner.max_gap == 0.2
def refused(param, words):
    r = n.set_parameters([param])[0]
    assert not r.successful and all(w in r.reason for w in words), r.reason
refused(Parameter("gains", value=[1.0, 1.0]), ["gains has 2 entries", "joint_names has 4"])
refused(Parameter("lower", value=[-0.8, -0.5, -0.4, 0.5]), ["jaw", "lower"])  # above the jaw's upper 0.45
refused(Parameter("signs", value=[1.0, -1.0, 1.0, 2.0]), ["signs"])
refused(Parameter("max_gap", value=-1.0), ["max_gap"])
r = n.set_parameters([Parameter("joint_names", value=["a", "b", "c", "d"])])[0]
assert not r.successful  # restart: read-only
for p in (Parameter("gains", value=[0.5, 1.0, 1.0, 1.0]), Parameter("max_velocity", value=[1.0, 2.0, 1.5, 4.0]),
          Parameter("max_gap", value=0.3)):
    r = n.set_parameters([p])[0]
    assert r.successful, r.reason
pl = n.planner
assert pl.mapper.joints[0].gain == 0.5 and pl.limiter.vmax[0] == 1.0 and pl.max_gap == 0.3
s = SimHead(parameter_overrides=[Parameter("replacement", value="now")])
assert s.follower.replacement == "now" and s.actuator.bandwidth == 12.0
assert s.set_parameters([Parameter("bandwidth", value=5.0)])[0].successful and s.actuator.bandwidth == 5.0
assert not s.set_parameters([Parameter("bandwidth", value=0.0)])[0].successful
n.destroy_node(); s.destroy_node(); rclpy.shutdown()
print("params ok")
"""


def test_live_parameters_apply_or_are_refused_with_a_reason(ros_domain_id, tmp_path):
    (tmp_path / "params.py").write_text(LIVE_PARAMS)
    r = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'params.py'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "params ok" in r.stdout, r.stdout + r.stderr
