"""Record chosen topics to a rosbag2 MCAP bag with the `rosbags` library (no rosbag2 needed).

Messages are stored as received (CDR bytes from rclpy, timestamp = receive time on the node's clock) under a
rosbag2 version-9 MCAP bag whose schemas come from a typestore with the timar_msgs .msg definitions added,
so `ros2 bag play`, rosbags and mcap_ros2 all read it. Topic types come from a table of the timar topics or,
for any other topic, from the ROS graph once a publisher appears. Closes the bag on shutdown, or
`done_grace` s after conversation/done when `stop_on_done` is set.
"""

from __future__ import annotations

import importlib
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosbags.rosbag2 import StoragePlugin, Writer

from timar_model.eval.bag_eval import timar_typestore

from .params import declare, resolve_path
from .spin import run_node

KNOWN_TYPES = {
    "user/audio": "timar_msgs/msg/AudioChunk",
    "agent/audio": "timar_msgs/msg/AudioChunk",
    "user/head_motion": "timar_msgs/msg/HeadMotion",
    "agent/head_motion": "timar_msgs/msg/HeadMotion",
    "agent/head_motion_gt": "timar_msgs/msg/HeadMotion",
    "user/head_pose": "geometry_msgs/msg/PoseStamped",
    "agent/head_pose": "geometry_msgs/msg/PoseStamped",
    "agent/joint_states": "sensor_msgs/msg/JointState",
    "agent/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "conversation/done": "std_msgs/msg/String",
}


def message_class(type_name: str):
    """'pkg/msg/Type' -> the rclpy message class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class BagRecorder(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_recorder", **kwargs)
        self.p = declare(self, "bag_recorder")
        self.path = resolve_path(self.p["output"])
        if self.path.exists():
            raise FileExistsError(f"bag_recorder.output {self.path} exists; choose a new folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.typestore = timar_typestore()
        self.writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.pending = {self.resolve_topic_name(t): t.lstrip("/") for t in self.p["topics"]}
        wanted = sorted(self.pending)
        self.done_at: float | None = None
        self.closed = False
        self._subscribe_known()
        self.create_timer(0.2, self._discover)
        self.get_logger().info(f"recording {wanted} -> {self.path}")

    def _subscribe(self, topic: str, type_name: str) -> None:
        cls = message_class(type_name)
        qos = QoSProfile(depth=500)
        if topic.endswith("conversation/done"):
            qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.connections[topic] = self.writer.add_connection(topic, type_name, typestore=self.typestore)
        self.counts[topic] = 0
        self.create_subscription(cls, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
        self.pending.pop(topic, None)

    def _subscribe_known(self) -> None:
        for topic, short in list(self.pending.items()):
            for suffix, type_name in KNOWN_TYPES.items():
                if short == suffix or short.endswith("/" + suffix):
                    self._subscribe(topic, type_name)
                    break

    def _discover(self) -> None:
        if self.pending:
            for topic, types in self.get_topic_names_and_types():
                if topic in self.pending and types:
                    self._subscribe(topic, types[0])

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(self.connections[topic], self.get_clock().now().nanoseconds, data)
        self.counts[topic] += 1
        if topic.endswith("conversation/done") and self.p["stop_on_done"] and self.done_at is None:
            self.done_at = time.monotonic()

    def finished(self) -> bool:
        return self.done_at is not None and time.monotonic() - self.done_at > self.p["done_grace"]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            self.get_logger().info(f"closed {self.path}: {self.counts}")


def main(args: list[str] | None = None) -> None:
    run_node(BagRecorder, args, until=lambda node: node.finished(), on_exit=lambda node: node.close())

if __name__ == "__main__":
    main()
