"""Replay a DualTalk-layout clip pair as live topics.

One speaker is the user (user/audio + user/head_motion), the other speaker's audio is agent/audio (the agent's
own speech) and its motion the ground truth on agent/head_motion_gt. Every message goes out once its time has
passed: an audio chunk when its last sample is due, a frame at its capture time; stamps are
t0 + sample / 16000 and t0 + frame / 25 with t0 = start time (+ start_delay). With rate != 1 (or
publish_clock) the player also publishes /clock (the other nodes then need use_sim_time: true; `timar_run` and
the launch files set it). When
everything is out it publishes conversation/done (std_msgs/String, the clip name; latched) and exits
(exit_when_done). QoS of every topic: timar_ros/qos.py.

`loops` plays the clip that many times back to back on one continuous timeline (stamps and turn indices go
on), for long sessions (scripts/soak.py).

Faults, for testing what receives the replay (scripts/soak.py --faults); all off by default, drawn from a
seeded RNG (`fault_seed`), so a run is repeatable:
  drop_fraction       share of audio messages (user/audio and agent/audio, each drawn on its own) not sent;
  duplicate_fraction  share of those sent that are sent twice (same stamp, same data);
  both only for content between faults_from and faults_until (s of conversation time; until 0 = the end);
  clock_jump_at / clock_jump_s: the stamps of all content from clock_jump_at s of conversation time on are
                      shifted by clock_jump_s (negative = back: a bag replayed twice, a clock set back), and so
                      is /clock when it is published (rate != 1 or publish_clock: the nodes on sim time see
                      their clock jump with the stamps). Messages still go out on time.
Every fault is counted on /diagnostics (timar/conversation_player), so a recording shows what was done to it.
"""

from __future__ import annotations

import array
import time
from dataclasses import asdict, dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
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
    Param("publish_clock", False, "publish /clock also at rate 1 (the other nodes then run on it, and a clock jump "
          "fault moves their clock too, as a bag replayed twice on sim time does)", change="restart"),
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
    Param("loops", 1, "play the clip this many times back to back (one continuous timeline)", range=(1, 1_000_000),
          change="restart"),
    Param("drop_fraction", 0.0, "fault: share of audio messages not sent", range=(0.0, 1.0), change="restart"),
    Param("duplicate_fraction", 0.0, "fault: share of audio messages sent twice", range=(0.0, 1.0),
          change="restart"),
    Param("faults_from", 0.0, "s of conversation time where drops and duplicates start", range=(0.0, 1e7),
          change="restart"),
    Param("faults_until", 0.0, "s of conversation time where drops and duplicates end; 0 = the end",
          range=(0.0, 1e7), change="restart"),
    Param("fault_seed", 0, "seed of the drop / duplicate draws", range=(0, 2**31 - 1), change="restart"),
    Param("clock_jump_at", 0.0, "fault: s of conversation time from which the stamps (and /clock, when published) "
          "jump; 0 = never", range=(0.0, 1e7), change="restart"),
    Param("clock_jump_s", -5.0, "fault: s added to the stamps (and /clock) from clock_jump_at on (negative = back)",
          range=(-3600.0, 3600.0), change="restart"),
    Param("diagnostics_period", 1.0, "s between /diagnostics messages (what was sent, dropped, duplicated)",
          range=(0.05, 60.0), change="restart"),
)


@dataclass
class PlayerCounters:
    user_chunks: int = 0  # user/audio messages sent (duplicates included)
    agent_chunks: int = 0
    motion_frames: int = 0
    dropped_chunks: int = 0  # audio messages not sent (drop_fraction)
    dropped_seconds: float = 0.0  # of audio content
    duplicated_chunks: int = 0  # audio messages sent a second time (duplicate_fraction)
    clock_jumps: int = 0  # 1 once the stamps jumped (clock_jump_at)
    loop: int = 0  # the pass over the clip now playing (0-based)


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
        self.loops = int(p["loops"])
        self.rng = np.random.default_rng(p["fault_seed"])
        self.counters = PlayerCounters()

        self.pub_user_audio = self.create_publisher(AudioChunk, "user/audio", qos.profile("user/audio"))
        self.pub_agent_audio = self.create_publisher(AudioChunk, "agent/audio", qos.profile("agent/audio"))
        self.pub_user_motion = self.create_publisher(HeadMotion, "user/head_motion", qos.profile("user/head_motion"))
        self.pub_gt = self.create_publisher(HeadMotion, "agent/head_motion_gt", qos.profile("agent/head_motion_gt"))
        self.pub_done = self.create_publisher(String, "conversation/done", qos.profile("conversation/done"))
        self.pub_clock = (self.create_publisher(Clock, "/clock", qos.profile("/clock"))
                          if p["rate"] != 1.0 or p["publish_clock"] else None)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)

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

    def _clock_offset(self, now: float) -> float:
        """What the clock jump fault adds to /clock at stream time `now`."""
        jump_at = self.p["clock_jump_at"]
        return self.p["clock_jump_s"] if jump_at > 0 and self.t0 is not None and now - self.t0 >= jump_at else 0.0

    def _stamp(self, t: float) -> float:
        """The stamp of content at conversation time t (s after t0), with the clock jump fault."""
        jump_at = self.p["clock_jump_at"]
        if jump_at > 0 and t >= jump_at:
            if not self.counters.clock_jumps:
                self.counters.clock_jumps = 1
                self.get_logger().warn(f"fault: stamps jump by {self.p['clock_jump_s']:+g} s from {t:.2f} s on")
            return self.t0 + t + self.p["clock_jump_s"]
        return self.t0 + t

    def _copies(self, t: float, seconds: float) -> int:
        """How often an audio message with content at conversation time t goes out: 0 (dropped), 1 or 2."""
        p = self.p
        if not (p["drop_fraction"] or p["duplicate_fraction"]):
            return 1
        if t < p["faults_from"] or (p["faults_until"] > 0 and t >= p["faults_until"]):
            return 1
        if self.rng.random() < p["drop_fraction"]:
            self.counters.dropped_chunks += 1
            self.counters.dropped_seconds += seconds
            return 0
        if self.rng.random() < p["duplicate_fraction"]:
            self.counters.duplicated_chunks += 1
            return 2
        return 1

    def _send_audio(self, pub, t: float, data: np.ndarray, frame_id: str) -> int:
        copies = self._copies(t, data.size / SAMPLE_RATE)
        if copies:
            msg = self._audio_msg(self._stamp(t), data, frame_id)
            for _ in range(copies):
                pub.publish(msg)
        return copies

    def _tick(self) -> None:
        now = self._stream_now()
        if self.pub_clock is not None:  # jumps with the stamps (clock_jump_at): the conversation's clock
            self.pub_clock.publish(Clock(clock=sec_to_stamp(now + self._clock_offset(now))))
        if not self._ready():
            return
        n, frames = self.user_audio.size, self.user_motion.shape[0]
        total_n, total_f = n * self.loops, frames * self.loops
        while self.next_frame < total_f and self.t0 + self.next_frame / FPS <= now:
            f = self.next_frame
            stamp = self._stamp(f / FPS)
            turn, i = divmod(f, FPS)
            self.pub_user_motion.publish(head_motion_msg(self.user_motion[f % frames], stamp, "user", turn, i))
            self.pub_gt.publish(head_motion_msg(self.agent_motion[f % frames], stamp, "agent_gt", turn, i))
            self.counters.motion_frames += 1
            self.next_frame += 1
        while self.next_chunk < total_n:
            a = self.next_chunk  # a chunk never crosses the end of a pass over the clip
            loop, la = divmod(a, n)
            lb = min(la + self.chunk, n)
            b = loop * n + lb
            if self.t0 + b / SAMPLE_RATE > now:
                break
            self.counters.loop = loop
            t = a / SAMPLE_RATE
            self.counters.user_chunks += self._send_audio(self.pub_user_audio, t, self.user_audio[la:lb], "user")
            if self.p["publish_agent_audio"]:
                self.counters.agent_chunks += self._send_audio(self.pub_agent_audio, t, self.agent_audio[la:lb],
                                                               "agent_tts")
            self.next_chunk = b
        if not self.done and self.next_chunk >= total_n and self.next_frame >= total_f:
            self.done = True
            self.pub_done.publish(String(data=self.clip))
            self.get_logger().info(f"done: {self.clip} ({total_n / SAMPLE_RATE:.0f} s, {self.loops} pass(es)); "
                                   f"{self._counter_text()}")
            self.done_at = time.monotonic()
            self._publish_diagnostics()

    def _counter_text(self) -> str:
        return ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in asdict(self.counters).items())

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(name="timar/conversation_player", hardware_id="timar")
        faults = self.counters.dropped_chunks or self.counters.duplicated_chunks or self.counters.clock_jumps
        st.level = DiagnosticStatus.WARN if faults else DiagnosticStatus.OK
        st.message = "done" if self.done else ("playing" if self.t0 is not None else "waiting for subscribers")
        values = {**asdict(self.counters), "conversation_s": max(0.0, self._stream_now() - self.t0)
                  if self.t0 is not None else 0.0, "t0": self.t0 if self.t0 is not None else 0.0}
        st.values = [KeyValue(key=k, value=f"{v:.6f}" if k == "t0" else (f"{v:.6g}" if isinstance(v, float)
                                                                          else str(v)))
                     for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def finished(self) -> bool:
        # with rate != 1 the other nodes live on this node's /clock: keep it running until their last frames
        linger = 0.5 if self.pub_clock is None else 0.5 + 3.0 / self.p["rate"] + 2.0
        return self.done and self.p["exit_when_done"] and time.monotonic() - self.done_at > linger


def main(args: list[str] | None = None) -> None:
    run_node(ConversationPlayer, args, until=lambda node: node.finished())


if __name__ == "__main__":
    main()
