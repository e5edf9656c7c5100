"""timar_msgs is built and its messages cross real DDS between two separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ros

SUBSCRIBER = textwrap.dedent(
    """
    import json, sys, time
    import rclpy
    from rclpy.node import Node
    from timar_msgs.msg import AudioChunk, HeadMotion

    rclpy.init()
    node = Node("dds_test_sub")
    got = {"audio": [], "motion": []}
    def on_audio(m):
        got["audio"].append({"stamp": [m.header.stamp.sec, m.header.stamp.nanosec], "frame_id": m.header.frame_id,
                             "rate": m.sample_rate, "channels": m.channels, "data": [float(x) for x in m.data]})
    def on_motion(m):
        got["motion"].append({"expression": [float(x) for x in m.expression], "jaw": [float(x) for x in m.jaw_pose],
                              "rot": [float(x) for x in m.head_rotation], "turn": m.turn_index,
                              "frame": m.frame_index})
    node.create_subscription(AudioChunk, "user/audio", on_audio, 10)
    node.create_subscription(HeadMotion, "agent/head_motion", on_motion, 10)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (len(got["audio"]) < 3 or len(got["motion"]) < 3):
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
    """
)

PUBLISHER = textwrap.dedent(
    """
    import time
    import rclpy
    from rclpy.node import Node
    from timar_msgs.msg import AudioChunk, HeadMotion

    rclpy.init()
    node = Node("dds_test_pub")
    pa = node.create_publisher(AudioChunk, "user/audio", 10)
    pm = node.create_publisher(HeadMotion, "agent/head_motion", 10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (pa.get_subscription_count() == 0 or pm.get_subscription_count() == 0):
        time.sleep(0.05)
    time.sleep(0.5)
    for i in range(3):
        a = AudioChunk()
        a.header.stamp.sec, a.header.stamp.nanosec = 100 + i, 250_000_000
        a.header.frame_id = "mic"
        a.sample_rate, a.channels = 16000, 2
        a.data = [0.5 * i, -0.25, 0.125, 1.0]
        pa.publish(a)
        m = HeadMotion()
        m.expression = [float(k) / 10 + i for k in range(50)]
        m.jaw_pose = [0.1 * i, 0.0, -0.1]
        m.head_rotation = [0.01, 0.02 * i, 0.03]
        m.turn_index, m.frame_index = 7, i
        pm.publish(m)
        time.sleep(0.1)
    time.sleep(1.0)
    """
)


def test_messages_round_trip_between_processes(ros_domain_id):
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER], stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == "ready"
        pub = subprocess.run([sys.executable, "-c", PUBLISHER], timeout=60, capture_output=True, text=True)
        assert pub.returncode == 0, pub.stderr
        out, _ = sub.communicate(timeout=60)
    finally:
        sub.kill()
    got = json.loads(out.strip().splitlines()[-1])
    assert len(got["audio"]) == 3 and len(got["motion"]) == 3
    for i, a in enumerate(got["audio"]):
        assert a["stamp"] == [100 + i, 250_000_000]
        assert a["frame_id"] == "mic" and a["rate"] == 16000 and a["channels"] == 2
        assert a["data"] == pytest.approx([0.5 * i, -0.25, 0.125, 1.0])
    for i, m in enumerate(got["motion"]):
        assert m["expression"] == pytest.approx([k / 10 + i for k in range(50)], abs=1e-6)
        assert m["jaw"] == pytest.approx([0.1 * i, 0.0, -0.1], abs=1e-6)
        assert m["rot"] == pytest.approx([0.01, 0.02 * i, 0.03], abs=1e-6)
        assert (m["turn"], m["frame"]) == (7, i)


def test_message_definitions_match_the_interface_contract():
    from timar_msgs.msg import AudioChunk, HeadMotion

    assert AudioChunk.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "sample_rate": "uint32",
        "channels": "uint8",
        "data": "sequence<float>",
    }
    assert HeadMotion.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "expression": "sequence<float>",
        "jaw_pose": "float[3]",
        "head_rotation": "float[3]",
        "turn_index": "uint32",
        "frame_index": "uint32",
    }
