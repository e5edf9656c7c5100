"""Replay a DualTalk-layout clip pair as live topics.

One speaker is the user (user/audio + user/head_motion), the other speaker's audio is agent/audio (the agent's
own speech) and its motion the ground truth on agent/head_motion_gt. Every message goes out once its time has
passed: an audio chunk when its last sample is due, a frame at its capture time; stamps are
t0 + sample / 16000 and t0 + frame / 25 with t0 = start time (+ start_delay). With rate != 1 the player also
publishes /clock (the other nodes then need use_sim_time: true; `timar_run` and the launch files set it). When
everything is out it publishes conversation/done (std_msgs/String, the clip name; latched) and exits
(exit_when_done). QoS of every topic: timar_ros/qos.py.
"""

from __future__ import annotations

import array
import time

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String
from timar_msgs.msg import AudioChunk, HeadMotion

from timar_model.data.dualtalk import list_samples
from timar_model.motion import FPS, SAMPLE_RATE

from . import qos
from .convert import head_motion_msg, sec_to_stamp
from .params import Param, declare_params, resolve_path
from .spin import run_node

PARAMS = (
    Param("data_dir", "data/synth/test", "DualTalk-layout folder of <clip>_speaker{1,2}.{wav,npz} (relative: to "
          "the checkout)", change="restart"),
    Param("clip", "", "clip to play; empty = the first", change="restart"),
    Param("user_speaker", 2, "this speaker is the user; the other one's audio is agent/audio and its motion "
          "agent/head_motion_gt", range=(1, 2), change="restart"),
    Param("rate", 1.0, "playback speed (1 = real time; otherwise it publishes /clock)", range=(0.01, 100.0),
          change="restart"),
    Param("chunk_samples", 1600, "samples per audio chunk (1600 = 0.1 s)", range=(1, 160000), change="restart"),
    Param("start_delay", 1.0, "s between the subscribers being there and the first sample", range=(0.0, 600.0),
          change="restart"),
    Param("wait_for_subscribers", 1, "start once this many nodes subscribe to user/audio", range=(0, 100),
          change="live"),
    Param("wait_timeout", 60.0, "s; start anyway after this long", range=(0.0, 3600.0), change="live"),
    Param("max_turns", 0, "play at most this many 1 s turns; 0 = the whole clip", range=(0, 1_000_000),
          change="restart"),
    Param("publish_agent_audio", True, "publish the other speaker's audio as agent/audio", change="live"),
    Param("exit_when_done", True, "exit once everything is published (and the last turn had time to finish)",
          change="live"),
)


class ConversationPlayer(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("conversation_player", **kwargs)
        if self.get_parameter("use_sim_time").value:  # it publishes /clock itself from wall-clock timers
            self.set_parameters([Parameter("use_sim_time", Parameter.Type.BOOL, False)])
        p = self.p = declare_params(self, PARAMS)
        data_dir = resolve_path(p["data_dir"])
        samples = [s for s in list_samples(data_dir) if s.agent_speaker == 3 - p["user_speaker"]]
        if p["clip"]:
            samples = [s for s in samples if s.clip == p["clip"]]
            if not samples:
                raise FileNotFoundError(f"clip {p['clip']!r} not found in {data_dir}")
        if not samples:
            raise FileNotFoundError(f"no clips in {data_dir} (expected <clip>_speaker{{1,2}}.{{wav,npz}})")
        s = samples[0]
        turns = s.num_turns if p["max_turns"] <= 0 else min(s.num_turns, p["max_turns"])
        n, f = turns * SAMPLE_RATE, turns * FPS
        self.clip = s.clip
        self.user_audio, self.agent_audio = s.user_audio[:n], s.agent_audio[:n]
        self.user_motion, self.agent_motion = s.user_motion[:f], s.agent_motion[:f]
        self.chunk = int(p["chunk_samples"])

        self.pub_user_audio = self.create_publisher(AudioChunk, "user/audio", qos.profile("user/audio"))
        self.pub_agent_audio = self.create_publisher(AudioChunk, "agent/audio", qos.profile("agent/audio"))
        self.pub_user_motion = self.create_publisher(HeadMotion, "user/head_motion", qos.profile("user/head_motion"))
        self.pub_gt = self.create_publisher(HeadMotion, "agent/head_motion_gt", qos.profile("agent/head_motion_gt"))
        self.pub_done = self.create_publisher(String, "conversation/done", qos.profile("conversation/done"))
        self.pub_clock = self.create_publisher(Clock, "/clock", qos.profile("/clock")) if p["rate"] != 1.0 else None

        self.wall0 = time.monotonic()
        self.v0 = time.time()  # virtual time at wall0 (only differs from wall time when rate != 1)
        self.t0: float | None = None  # stream time of the first sample, set once subscribers are there
        self.next_chunk = 0  # sample index of the next chunk to publish
        self.next_frame = 0
        self.done = False
        self.timer = self.create_timer(0.005, self._tick)
        self.get_logger().info(
            f"{self.clip} from {data_dir}: {turns} turns, user = speaker {p['user_speaker']}, "
            f"rate {p['rate']}; "
            f"waiting for {p['wait_for_subscribers']} subscriber(s) on user/audio"
        )

    def _ready(self) -> bool:
        if self.t0 is not None:
            return True
        waited = time.monotonic() - self.wall0
        n = self.count_subscribers("user/audio")
        if n >= self.p["wait_for_subscribers"] or waited > self.p["wait_timeout"]:
            if n < self.p["wait_for_subscribers"]:
                self.get_logger().warn(f"only {n} subscriber(s) on user/audio after {waited:.0f} s; playing")
            self.t0 = self._stream_now() + self.p["start_delay"]
            self.get_logger().info(f"playing, t0 = {self.t0:.3f}")
        return self.t0 is not None

    def _stream_now(self) -> float:
        return self.v0 + (time.monotonic() - self.wall0) * self.p["rate"]

    def _audio_msg(self, stamp: float, data: np.ndarray, frame_id: str) -> AudioChunk:
        msg = AudioChunk(sample_rate=SAMPLE_RATE, channels=1)
        msg.data = array.array("f", np.ascontiguousarray(data, dtype=np.float32).tobytes())
        msg.header.stamp = sec_to_stamp(stamp)
        msg.header.frame_id = frame_id
        return msg

    def _tick(self) -> None:
        now = self._stream_now()
        if self.pub_clock is not None:
            self.pub_clock.publish(Clock(clock=sec_to_stamp(now)))
        if not self._ready():
            return
        n, fpt = self.user_audio.size, FPS
        while self.next_frame < self.user_motion.shape[0] and self.t0 + self.next_frame / FPS <= now:
            f = self.next_frame
            stamp = self.t0 + f / FPS
            turn, i = divmod(f, fpt)
            self.pub_user_motion.publish(head_motion_msg(self.user_motion[f], stamp, "user", turn, i))
            self.pub_gt.publish(head_motion_msg(self.agent_motion[f], stamp, "agent_gt", turn, i))
            self.next_frame += 1
        while self.next_chunk < n and self.t0 + min(self.next_chunk + self.chunk, n) / SAMPLE_RATE <= now:
            a, b = self.next_chunk, min(self.next_chunk + self.chunk, n)
            stamp = self.t0 + a / SAMPLE_RATE
            self.pub_user_audio.publish(self._audio_msg(stamp, self.user_audio[a:b], "user"))
            if self.p["publish_agent_audio"]:
                self.pub_agent_audio.publish(self._audio_msg(stamp, self.agent_audio[a:b], "agent_tts"))
            self.next_chunk = b
        if not self.done and self.next_chunk >= n and self.next_frame >= self.user_motion.shape[0]:
            self.done = True
            self.pub_done.publish(String(data=self.clip))
            self.get_logger().info(f"done: {self.clip} ({n / SAMPLE_RATE:.0f} s)")
            self.done_at = time.monotonic()

    def finished(self) -> bool:
        # with rate != 1 the other nodes live on this node's /clock: keep it running until their last frames
        linger = 0.5 if self.pub_clock is None else 0.5 + 3.0 / self.p["rate"] + 2.0
        return self.done and self.p["exit_when_done"] and time.monotonic() - self.done_at > linger


def main(args: list[str] | None = None) -> None:
    run_node(ConversationPlayer, args, until=lambda node: node.finished())


if __name__ == "__main__":
    main()
