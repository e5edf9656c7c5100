"""The ROS side of the viewer over real DDS: head_marker turns agent/head_motion into a triangle-mesh
MarkerArray, and `timar view --live` records a running agent's topics into a Rerun recording.

A driver process publishes the topics (and, for head_marker, records what comes back into a JSON file);
the nodes run as their own processes, as they do on a robot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
FRAMES = 50  # two turns of agent frames

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up"),
]

DRIVER = r"""
import json, sys, time
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from timar_msgs.msg import AudioChunk, HeadMotion
from visualization_msgs.msg import MarkerArray
from timar_ros import qos
from timar_ros.convert import head_motion_msg, sec_to_stamp, stamp_to_sec

out, mode, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
rclpy.init()
node = rclpy.create_node("view_driver")
got = {"markers": [], "sent": []}

def on_markers(msg):
    got["markers"].append([{"ns": m.ns, "id": m.id, "type": m.type, "frame_id": m.header.frame_id,
                            "stamp": stamp_to_sec(m.header.stamp), "color": [m.color.r, m.color.g, m.color.b],
                            "points": [[p.x, p.y, p.z] for p in m.points]} for m in msg.markers])

pubs = {t: node.create_publisher(HeadMotion, t, qos.frames())
        for t in ("agent/head_motion", "agent/head_motion_gt", "user/head_motion")}
audio = {t: node.create_publisher(AudioChunk, t, qos.audio()) for t in ("user/audio", "agent/audio")}
diag = node.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
if mode == "marker":
    node.create_subscription(MarkerArray, "agent/head_marker", on_markers, qos.frames())
deadline = time.monotonic() + 60
# every topic matched before the first message (volatile QoS: an early message would be lost)
topics = ["agent/head_motion"] if mode == "marker" else [*pubs, *audio, "/diagnostics"]
while any(node.count_subscribers(t) < 1 for t in topics) or (mode == "marker"
                                                             and node.count_publishers("agent/head_marker") < 1):
    rclpy.spin_once(node, timeout_sec=0.05)
    if time.monotonic() > deadline:
        sys.exit("the node did not come up")
t0 = 100.0
for f in range(frames):
    k, i = divmod(f, 25)
    m = np.zeros(56, np.float32)
    m[50] = 0.2 + 0.1 * np.sin(f / 5.0)
    m[53:56] = [0.1 * np.sin(f / 7.0), 0.3 * np.sin(f / 9.0), 0.0]
    pubs["agent/head_motion"].publish(head_motion_msg(m, t0 + 1.25 + f / 25, "agent_head", k, i))
    pubs["agent/head_motion_gt"].publish(head_motion_msg(m * 0.5, t0 + f / 25, "agent_head", k, i))
    pubs["user/head_motion"].publish(head_motion_msg(-m, t0 + f / 25, "user_head", k, i))
    got["sent"].append({"stamp": t0 + 1.25 + f / 25, "motion": m.tolist()})
    if f % 2 == 0:  # 0.08 s of audio per 2 frames
        for name, pub in audio.items():
            c = AudioChunk(sample_rate=16000, channels=1, data=(0.1 * np.ones(1280, np.float32)).tolist())
            c.header.stamp = sec_to_stamp(t0 + f / 25)
            pub.publish(c)
    if f % 25 == 0:
        st = DiagnosticStatus(name="timar/agent", values=[KeyValue(key="output_delay", value="1.25"),
                                                           KeyValue(key="turns_generated", value=str(k))])
        d = DiagnosticArray(status=[st])
        d.header.stamp = sec_to_stamp(t0 + f / 25)
        diag.publish(d)
    end = time.monotonic() + 0.04
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.005)
end = time.monotonic() + 2.0
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.02)
json.dump(got, open(out, "w"))
node.destroy_node()
rclpy.shutdown()
"""


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def _start(cmd: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source {ENV_SH} && exec {cmd}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _drive(tmp_path: Path, mode: str, env: dict) -> subprocess.CompletedProcess:
    (tmp_path / "driver.py").write_text(DRIVER)
    return subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'driver.py'} "
                                         f"{tmp_path / 'out.json'} {mode} {FRAMES}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(2)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_head_marker_publishes_the_posed_head(ros_domain_id, tmp_path):
    from timar_ros.head_marker import load_head

    env = _env()
    env.pop("TIMAR_FLAME", None)
    node = _start("python -m timar_ros.head_marker --ros-args -p max_rate:=12.5", env)
    try:
        driver = _drive(tmp_path, "marker", env)
    finally:
        log = _stop(node)
    assert driver.returncode == 0, driver.stdout + driver.stderr + log
    assert node.returncode == 0, log
    got = json.loads((tmp_path / "out.json").read_text())
    head = load_head("", 0.5)
    sent = {round(s["stamp"], 6): np.array(s["motion"], np.float64) for s in got["sent"]}
    # every second frame (12.5 of 25 per second), each a full head
    stamps = [markers[0]["stamp"] for markers in got["markers"]]
    np.testing.assert_allclose(stamps, [s["stamp"] for s in got["sent"][::2]], atol=1e-6)
    for markers in got["markers"]:
        assert all(m["type"] == 11 and m["ns"] == "timar_head" and m["frame_id"] == "agent_head" for m in markers)
        assert len({m["id"] for m in markers}) == len(markers) > 1  # one marker per colour
        stamp = markers[0]["stamp"]
        assert all(m["stamp"] == stamp for m in markers)
        points = np.concatenate([np.array(m["points"]) for m in markers])
        expected = head.pose(sent[round(stamp, 6)].astype(np.float32).astype(np.float64))[head.faces.reshape(-1)]
        assert points.shape == expected.shape == (3 * head.faces.shape[0], 3)
        np.testing.assert_allclose(np.array(sorted(map(tuple, points))), np.array(sorted(map(tuple, expected))),
                                   atol=1e-9)


def test_live_viewer_records_the_agent_topics(ros_domain_id, tmp_path):
    from test_view_recording import rrd_summary

    env = _env()
    rrd = tmp_path / "live.rrd"
    view = _start(f"{sys.executable} -m timar_model.cli view --live --seconds 120 --save {rrd}", env)
    try:
        driver = _drive(tmp_path, "live", env)
        time.sleep(1.0)  # the last flush
    finally:
        log = _stop(view)
    assert driver.returncode == 0, driver.stdout + driver.stderr + log
    assert view.returncode == 0 and f"received {3 * FRAMES} frames" in log, log
    s = rrd_summary(rrd)
    for role in ("agent", "ground_truth", "user"):
        assert s[(f"/heads/{role}/jaw", False)]["rows"] == FRAMES
        assert s[(f"/curves/jaw/{role}", False)]["rows"] == FRAMES
    assert s[("/speech/user", False)]["rows"] == (FRAMES // 2) * 8  # 0.08 s chunks, 10 ms envelope
    assert s[("/turns", False)]["rows"] == FRAMES // 25
    assert s[("/timing/latency_ms", False)]["rows"] == FRAMES // 25
    assert s[("/diagnostics/agent/turns_generated", False)]["rows"] == FRAMES // 25
