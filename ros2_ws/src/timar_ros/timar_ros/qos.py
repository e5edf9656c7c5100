"""Quality of service of every timar topic, chosen per kind of data (one table; the README lists it).

- audio (`user/audio`, `agent/audio`): a stream the turn assembler counts gaps in. Reliable, keep the last
  100 chunks (10 s of 0.1 s chunks). Subscribers follow `reliability`-style parameters where a driver may
  publish best effort (a best-effort subscription accepts both; a reliable one only reliable publishers).
- motion frames at 25 fps (`agent/head_motion`, `agent/head_pose`, `agent/joint_states`, `user/head_motion`,
  `user/head_pose`, ...): reliable, keep last 50 (2 s): a late frame is still useful to a recorder.
- one message per turn (`agent/motion_turn`, `agent/joint_trajectory`): reliable, keep last 10. A
  trajectory is the controller's plan for the next second: it must not be lost.
- state (`agent/speaking`, `conversation/done`): reliable + transient local, depth 1 ("latched"): a late
  subscriber gets the current value.
- commands (`agent/say`, `agent/stop_speaking`): reliable, keep last 10, volatile: every request counts, a
  stale one must not replay to a node that starts later.
- `/diagnostics`: reliable, keep last 10 (as diagnostic_updater does).
- `/clock` (the conversation player in sim time): reliable, keep last 10; rclpy's clock subscription is best
  effort, which accepts it.

`python -m timar_ros.qos` prints the topic table of the README ("Running it on a robot"; a test keeps them
equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
RECORDER_DEPTH = 500  # the bag recorder keeps this many messages per topic while it writes


def _profile(depth: int, reliability: str = "reliable", latched: bool = False) -> QoSProfile:
    if reliability not in RELIABILITY:
        raise ValueError(f"reliability must be one of {', '.join(RELIABILITY)}, got {reliability!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=RELIABILITY[reliability],
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def audio(reliability: str = "reliable") -> QoSProfile:
    return _profile(100, reliability)


def frames(reliability: str = "reliable") -> QoSProfile:
    return _profile(50, reliability)


def per_turn() -> QoSProfile:
    return _profile(10)


def latched() -> QoSProfile:
    return _profile(1, latched=True)


def commands() -> QoSProfile:
    return _profile(10)


def diagnostics() -> QoSProfile:
    return _profile(10)


def clock() -> QoSProfile:
    return _profile(10)


PROFILES = {
    "audio": audio,
    "frames": frames,
    "per_turn": per_turn,
    "latched": latched,
    "commands": commands,
    "diagnostics": diagnostics,
    "clock": clock,
}


@dataclass(frozen=True)
class Topic:
    name: str  # as the nodes name it (relative names follow the node's namespace)
    type: str  # "pkg/msg/Type"
    direction: str  # "in" (to the agent), "out" (from the agent graph), "demo" (replay and simulation only)
    profile: str  # a key of PROFILES
    description: str


TOPICS: tuple[Topic, ...] = (
    Topic("user/audio", "timar_msgs/msg/AudioChunk", "in", "audio",
          "the user's microphone (`audio_capture`: sounddevice, or `source: file` to play a WAV as a mic); "
          "audio_capture `reliability` sets the publisher's"),
    Topic("agent/audio", "timar_msgs/msg/AudioChunk", "in", "audio",
          "the robot's own speech as played (`speech_synth`, or any TTS that does the same: published up to "
          "`lookahead` early with future stamps, played at stamp + `output_delay`; absent = silence)"),
    Topic("agent/say", "std_msgs/msg/String", "in", "commands",
          "`speech_synth`: text for the robot to say, spoken after what is queued; an empty string cancels "
          "(`timar say`)"),
    Topic("agent/stop_speaking", "std_msgs/msg/Empty", "in", "commands",
          "`speech_synth`: stop speaking; what is already on agent/audio is still played, the rest is dropped"),
    Topic("agent/speaking", "std_msgs/msg/Bool", "out", "latched",
          "`speech_synth`: true while the robot's speech is at the speaker (first sample's stamp + "
          "`output_delay` to the last's)"),
    Topic("user/head_motion", "timar_msgs/msg/HeadMotion", "in", "frames",
          "the user's FLAME motion from a face tracker; agent `motion_reliability` sets the subscription's"),
    Topic("user/head_pose", "geometry_msgs/msg/PoseStamped", "in", "frames",
          "or only the user's head pose; agent `motion_reliability` sets the subscription's"),
    Topic("agent/head_motion", "timar_msgs/msg/HeadMotion", "out", "frames",
          "25 fps, each frame stamped with its display time"),
    Topic("agent/head_pose", "geometry_msgs/msg/PoseStamped", "out", "frames", "the head rotation as a pose"),
    Topic("agent/motion_turn", "timar_msgs/msg/HeadMotionTurn", "out", "per_turn",
          "each turn's 25 frames as soon as they are generated, about a second before the first is due"),
    Topic("agent/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", "out", "per_turn",
          "`head_bridge`: one per turn for a joint trajectory controller, neck yaw/pitch/roll + jaw within "
          "position, velocity and acceleration limits"),
    Topic("agent/joint_states", "sensor_msgs/msg/JointState", "out", "frames",
          "`head_bridge`: the same joints at 25 fps"),
    Topic("agent/head_marker", "visualization_msgs/msg/MarkerArray", "out", "frames",
          "`head_marker` (not started by the graphs): the agent's head as a triangle mesh for RViz / Foxglove"),
    Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "out", "diagnostics",
          "latency and counters (gaps, overlaps, late drops, rejected messages)"),
    Topic("agent/head_motion_gt", "timar_msgs/msg/HeadMotion", "demo", "frames",
          "`conversation_player`: the recorded motion of the speaker the agent stands in for (ground truth)"),
    Topic("conversation/done", "std_msgs/msg/String", "demo", "latched",
          "`conversation_player`: the clip's name once everything is published"),
    Topic("/clock", "rosgraph_msgs/msg/Clock", "demo", "clock",
          "`conversation_player` with `rate` != 1 (every other node then runs on sim time)"),
    Topic("sim_head/joint_states", "sensor_msgs/msg/JointState", "demo", "frames",
          "`sim_head`: the simulated head's joints following agent/joint_trajectory"),
    Topic("sim_head/reference", "sensor_msgs/msg/JointState", "demo", "frames",
          "`sim_head`: the trajectory point it is tracking"),
)

TOPIC_TYPES: dict[str, str] = {t.name.lstrip("/"): t.type for t in TOPICS}


def topic(name: str) -> Topic:
    """The table entry of a topic, by its name with or without a namespace ("/robot1/user/audio")."""
    short = name.lstrip("/")
    for t in TOPICS:
        key = t.name.lstrip("/")
        if short == key or short.endswith("/" + key):
            return t
    raise KeyError(f"{name} is not a timar topic (qos.TOPICS)")


def profile(name: str) -> QoSProfile:
    """The QoS of a timar topic (its default reliability)."""
    return PROFILES[topic(name).profile]()


def recording(name: str) -> QoSProfile:
    """What the bag recorder subscribes with: the topic's QoS, a stream's with a deeper queue (a latched
    topic keeps its depth 1); reliable and volatile for a topic that is not in the table."""
    try:
        p = profile(name)
    except KeyError:
        return _profile(RECORDER_DEPTH)
    if p.durability == DurabilityPolicy.VOLATILE:
        p.depth = max(p.depth, RECORDER_DEPTH)
    return p


def describe(profile: QoSProfile) -> str:
    rel = "reliable" if profile.reliability == ReliabilityPolicy.RELIABLE else "best effort"
    dur = "transient local" if profile.durability == DurabilityPolicy.TRANSIENT_LOCAL else "volatile"
    return f"{rel}, keep last {profile.depth}, {dur}"


def _short_type(type_name: str) -> str:
    pkg, _, name = type_name.split("/")
    return f"{pkg}/{name}"


def markdown_table() -> str:
    rows = ["| topic | type | direction | QoS | what |", "|---|---|---|---|---|"]
    for t in TOPICS:
        rows.append(f"| `{t.name}` | `{_short_type(t.type)}` | {t.direction} | {describe(PROFILES[t.profile]())} | "
                    f"{t.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
