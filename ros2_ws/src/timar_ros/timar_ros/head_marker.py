"""agent/head_motion -> agent/head_marker: the agent's head as a triangle mesh for RViz or Foxglove.

Each received frame (at most `max_rate` frames per second of their stamps; the frames between are skipped)
poses the head with timar_model.view (FLAME's linear blend skinning; the user's FLAME model when `flame` or
$TIMAR_FLAME names one, else the procedural stylised head) and publishes a visualization_msgs/MarkerArray:
one TRIANGLE_LIST marker per colour of the head (skin, lips, mouth, eyes, ...; namespace `timar_head`),
vertices in metres in the frame `frame_id` (default: the motion's own frame_id, the neutral head), stamped
with the frame's stamp.

Building tens of thousands of geometry_msgs/Point objects per message would cost more CPU than the agent
has, so the node serialises the MarkerArray once with rclpy and, for each frame, writes the posed vertices
and the stamp into a copy of those bytes (the offsets are found once and checked by deserialising) and
publishes the serialized message. Not started by the graphs: it costs CPU the agent needs.
"""

from __future__ import annotations

import struct

import numpy as np
from geometry_msgs.msg import Point
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from timar_msgs.msg import HeadMotion
from visualization_msgs.msg import Marker, MarkerArray

from timar_model.view.flame import FlameError, flame_path, load_flame
from timar_model.view.heads import role_head
from timar_model.view.procedural import procedural_head
from timar_model.view.skinning import SkinnedHead

from . import qos
from .convert import motion_from_msg, stamp_to_sec
from .params import Param, declare_params, resolve_path
from .spin import run_node

TOPIC = "agent/head_marker"
NAMESPACE = "timar_head"
_STAMP_MARK = 0x5EC0_0000  # template stamps: seconds = mark + marker index, nanoseconds = mark2 + index
_STAMP_MARK2 = 0x0ABC_DE00
_POINT_MARK = 918273.6455  # template first point of marker g: (mark + g, mark + g + 0.25, mark + g + 0.5)

PARAMS = (
    Param("flame", "", "FLAME model (generic_model.pkl or .npz); '' = $TIMAR_FLAME, else the procedural head "
          "(relative paths from TIMAR_ROOT)", change="restart"),
    Param("detail", 0.5, "tessellation of the procedural head (1 = what `timar view` draws)", range=(0.25, 2.0),
          change="restart"),
    Param("max_rate", 10.0, "Hz; publish at most this many frames per second (the others are skipped)",
          range=(0.1, 100.0), change="live"),
    Param("frame_id", "", "frame_id of the markers; '' = the motion's own", change="live"),
)


def load_head(flame: str, detail: float) -> SkinnedHead:
    """The head to publish, in the agent's colours: the FLAME model at `flame` (or $TIMAR_FLAME; FlameError if
    it is missing or malformed), else the procedural head at `detail`."""
    path = flame_path(resolve_path(flame) if flame else None)
    return role_head(procedural_head(detail) if path is None else load_flame(path), "agent")


class MarkerTemplate:
    """A serialized MarkerArray of the head with placeholders, and where to write each frame's vertices and
    stamp into it."""

    def __init__(self, head: SkinnedHead, frame_id: str) -> None:
        # one marker per colour: faces take the colour of their first corner
        face_rgb = np.round(head.colors[head.faces[:, 0]], 4)
        palette, group = np.unique(face_rgb, axis=0, return_inverse=True)
        group = group.reshape(-1)
        self.corners = [head.faces[group == g].reshape(-1) for g in range(len(palette))]  # vertex per point
        msg = MarkerArray()
        for g, rgb in enumerate(palette):
            m = Marker(ns=NAMESPACE, id=g, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
            m.header.frame_id = frame_id
            m.header.stamp.sec, m.header.stamp.nanosec = _STAMP_MARK + g, _STAMP_MARK2 + g
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = 1.0
            m.color.r, m.color.g, m.color.b, m.color.a = (*(float(c) for c in rgb), 1.0)
            points = [Point() for _ in range(self.corners[g].size)]
            points[0] = Point(x=_POINT_MARK + g, y=_POINT_MARK + g + 0.25, z=_POINT_MARK + g + 0.5)
            m.points = points
            msg.markers.append(m)
        self.bytes = serialize_message(msg)
        if self.bytes[1] != 1:
            raise RuntimeError("head_marker: the serialized MarkerArray is not little-endian CDR")
        self.point_offsets, self.stamp_offsets = [], []
        for g in range(len(palette)):
            self.point_offsets.append(self._find(struct.pack("<3d", _POINT_MARK + g, _POINT_MARK + g + 0.25,
                                                             _POINT_MARK + g + 0.5)))
            self.stamp_offsets.append(self._find(struct.pack("<iI", _STAMP_MARK + g, _STAMP_MARK2 + g)))

    def _find(self, pattern: bytes) -> int:
        at = self.bytes.find(pattern)
        if at < 0 or self.bytes.find(pattern, at + 1) >= 0:
            raise RuntimeError("head_marker: cannot locate a placeholder in the serialized MarkerArray")
        return at

    def fill(self, vertices: np.ndarray, stamp: float) -> bytes:
        """Posed vertices (V, 3) m and a stamp (s) -> the serialized MarkerArray."""
        buf = bytearray(self.bytes)
        sec = int(np.floor(stamp))
        nsec = min(int(round((stamp - sec) * 1e9)), 999_999_999)
        v = np.asarray(vertices, dtype="<f8")
        for corners, p_off, s_off in zip(self.corners, self.point_offsets, self.stamp_offsets):
            np.frombuffer(buf, dtype="<f8", count=corners.size * 3, offset=p_off)[:] = v[corners].reshape(-1)
            struct.pack_into("<iI", buf, s_off, sec, nsec)
        return bytes(buf)

    def check(self, vertices: np.ndarray) -> None:
        """Deserialize a filled message and compare: the offsets are right or this raises."""
        msg = deserialize_message(self.fill(vertices, 12.5), MarkerArray)
        for m, corners in zip(msg.markers, self.corners):
            got = np.array([[p.x, p.y, p.z] for p in m.points])
            if got.shape != (corners.size, 3) or not np.allclose(got, vertices[corners]):
                raise RuntimeError("head_marker: filled MarkerArray does not hold the vertices written into it")
            if (m.header.stamp.sec, m.header.stamp.nanosec) != (12, 500_000_000):
                raise RuntimeError("head_marker: filled MarkerArray does not hold the stamp written into it")


class HeadMarker(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("head_marker", **kwargs)
        self.p = declare_params(self, PARAMS)  # max_rate and frame_id are read at each frame
        self.head = load_head(self.p["flame"], self.p["detail"])
        self._templates: dict[str, MarkerTemplate] = {}
        self._last = -np.inf  # stamp of the last published frame, s
        self.published = 0
        self.skipped = 0
        self.pub = self.create_publisher(MarkerArray, TOPIC, qos.profile(TOPIC))
        self.create_subscription(HeadMotion, "agent/head_motion", self._on_motion, qos.frames())
        self.get_logger().info(f"{self.head.name} head, {self.head.faces.shape[0]} triangles, at most "
                               f"{self.p['max_rate']:g} markers/s on {TOPIC}")

    def template(self, frame_id: str) -> MarkerTemplate:
        if frame_id not in self._templates:
            t = MarkerTemplate(self.head, frame_id)
            t.check(self.head.template)
            self._templates = {frame_id: t}
        return self._templates[frame_id]

    def _on_motion(self, msg: HeadMotion) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        if 0.0 <= stamp - self._last < 1.0 / self.p["max_rate"] - 1e-4:  # by stamp: the same frames every time
            self.skipped += 1
            return
        try:
            motion = motion_from_msg(msg)
        except ValueError as e:
            self.get_logger().warning(f"dropped agent/head_motion: {e}", throttle_duration_sec=2.0)
            return
        if not np.all(np.isfinite(motion)):
            self.get_logger().warning("dropped agent/head_motion with non-finite values", throttle_duration_sec=2.0)
            return
        self._last = stamp
        frame_id = self.p["frame_id"] or msg.header.frame_id
        self.pub.publish(self.template(frame_id).fill(self.head.pose(motion), stamp))
        self.published += 1


def main(args: list[str] | None = None) -> None:
    run_node(HeadMarker, args, fatal=(FlameError,))


if __name__ == "__main__":
    main()
