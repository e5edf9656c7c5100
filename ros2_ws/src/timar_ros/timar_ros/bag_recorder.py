"""Record chosen topics to a rosbag2 MCAP bag with the `rosbags` library (no rosbag2 needed).

Messages are stored as received (CDR bytes from rclpy, timestamp = receive time on the node's clock, or on
the wall clock with `log_clock: system`, so that a jump of sim time cannot reorder the bag) under a rosbag2
version-9 MCAP bag whose schemas come from a typestore with the timar_msgs .msg definitions added, so
`ros2 bag play`, rosbags and mcap_ros2 all read it. Topic types and QoS come from the table of the timar
topics (timar_ros/qos.py) or, for any other topic, from the ROS graph once a publisher appears. Closes the bag
on shutdown, or `done_grace` s after conversation/done when `stop_on_done` is set (the demo sets it).
"""

from __future__ import annotations

import importlib
import time

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosbags.rosbag2 import StoragePlugin, Writer

from timar_model.eval.bag_eval import timar_typestore

from . import qos
from .params import Param, declare_params, resolve_path
from .spin import run_node

TOPICS = [
    "user/audio", "agent/audio", "user/head_motion", "agent/head_motion", "agent/head_motion_gt", "agent/head_pose",
    "agent/motion_turn", "agent/joint_states", "agent/joint_trajectory", "sim_head/joint_states",
    "sim_head/reference", "agent/say", "agent/stop_speaking", "agent/speaking", "/diagnostics", "conversation/done",
]

PARAMS = (
    Param("output", "outputs/bags/timar", "rosbag2 folder to create (must not exist; relative: to the checkout)",
          change="restart"),
    Param("topics", TOPICS, "topics to record (relative names follow the node's namespace)", change="restart"),
    Param("stop_on_done", False, "close the bag and exit done_grace s after conversation/done (a replay's end)",
          change="live"),
    Param("done_grace", 3.0, "s after conversation/done before closing (the last turn's frames)",
          range=(0.0, 600.0), change="live"),
    Param("log_clock", "node", "the clock of the bag's log times: node = this node's (sim time when use_sim_time), "
          "system = wall time always (as `ros2 bag record` without --use-sim-time; log times never jump back)",
          choices=("node", "system"), change="restart"),
)


def message_class(type_name: str):
    """'pkg/msg/Type' -> the rclpy message class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class BagRecorder(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_recorder", **kwargs)
        self.p = declare_params(self, PARAMS)
        self.path = resolve_path(self.p["output"])
        if self.path.exists():
            raise FileExistsError(f"{self.get_name()}: output {self.path} exists; choose a new folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.typestore = timar_typestore()
        self._log_clock = self.get_clock() if self.p["log_clock"] == "node" else Clock(clock_type=ClockType.SYSTEM_TIME)
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
        self.connections[topic] = self.writer.add_connection(topic, type_name, typestore=self.typestore)
        self.counts[topic] = 0
        self.create_subscription(cls, topic, lambda data, t=topic: self._on_message(t, data), qos.recording(topic),
                                 raw=True)
        self.pending.pop(topic, None)

    def _subscribe_known(self) -> None:
        for topic, short in list(self.pending.items()):
            try:
                type_name = qos.topic(short).type
            except KeyError:  # not a timar topic: its type comes from the graph (_discover)
                continue
            self._subscribe(topic, type_name)

    def _discover(self) -> None:
        if self.pending:
            for topic, types in self.get_topic_names_and_types():
                if topic in self.pending and types:
                    self._subscribe(topic, types[0])

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(self.connections[topic], self._log_clock.now().nanoseconds, data)
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
