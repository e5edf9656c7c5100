"""`timar view --live`: a running agent's topics into the Rerun viewer as they arrive.

Subscribes to agent/head_motion, agent/head_motion_gt, user/head_motion, user/audio, agent/audio and
/diagnostics and logs them with the same entities and layout as `timar view BAG` (timar_model.view.recording):
the heads in 3D, jaw / head rotation / leading expression curves, both speech envelopes, turn starts with
their latency (receive time of a turn's first frame - the turn's end) and every numeric diagnostics value.
Time is the conversation clock in seconds from the first message; the agent's frames are placed at their turn
time, stamp - output_delay (the agent's own, read from its /diagnostics, unless given). Buffered data goes to
the viewer every FLUSH_PERIOD s. Started by the `timar` command (timar_model stays free of ROS).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from timar_msgs.msg import AudioChunk, HeadMotion

from timar_model.runtime.live import LiveConfig
from timar_model.runtime.turns import InputError, to_mono_16k
from timar_model.view.conversation import Audio
from timar_model.view.heads import ROLES
from timar_model.view.recording import (
    GRPC_PORT,
    QUANTITIES,
    TIMELINE,
    WEB_PORT,
    HeadLogger,
    blueprint,
    curve_values,
    envelope,
    head_offsets,
    log_static,
    new_recording,
    serve_web,
    spawn_viewer,
)
from timar_model.view.skinning import SkinnedHead

from . import qos
from .convert import motion_from_msg, stamp_to_sec
from .spin import run_node

FLUSH_PERIOD = 0.2  # s
MOTION_TOPICS = {"agent": "agent/head_motion", "ground_truth": "agent/head_motion_gt", "user": "user/head_motion"}
AUDIO_TOPICS = {"user": "user/audio", "agent": "agent/audio"}


class LiveView(Node):
    """Logs the agent's topics into the Rerun recording stream `rec`."""

    def __init__(self, head: SkinnedHead, rec, output_delay: float | None = None, **kwargs) -> None:
        super().__init__("timar_view", **kwargs)
        self.head, self.rec = head, rec
        self.fixed_delay = output_delay is not None
        self.output_delay = output_delay if output_delay is not None else LiveConfig().output_delay
        self.t0: float | None = None  # s, stamp that is time 0 of the recording
        self.offsets = head_offsets(list(ROLES))
        self.loggers: dict[str, HeadLogger] = {}
        self.frames: dict[str, list[tuple[float, np.ndarray]]] = {r: [] for r in ROLES}
        self.speech: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {w: [] for w in AUDIO_TOPICS}
        self.counts = {"frames": 0, "audio_chunks": 0, "diagnostics": 0, "turns": 0}
        for role, topic in MOTION_TOPICS.items():
            self.create_subscription(HeadMotion, topic, lambda m, r=role: self._on_motion(r, m), qos.frames())
        for who, topic in AUDIO_TOPICS.items():
            self.create_subscription(AudioChunk, topic, lambda m, w=who: self._on_audio(w, m), qos.audio())
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.diagnostics())
        self.create_timer(FLUSH_PERIOD, self.flush)

    def _time(self, stamp: float) -> float:
        """A stamp (s) -> s on the recording's clock (the first one seen is 0)."""
        if self.t0 is None:
            self.t0 = stamp
        return stamp - self.t0

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_motion(self, role: str, msg: HeadMotion) -> None:
        try:
            motion = motion_from_msg(msg)
        except ValueError:
            return
        stamp = stamp_to_sec(msg.header.stamp)
        if role == "agent":
            stamp -= self.output_delay
            if msg.frame_index == 0:
                t = self._time(stamp)
                latency_ms = 1e3 * (self._now() - (stamp + 1.0))
                self._log_turn(t, int(msg.turn_index), latency_ms)
        self.frames[role].append((self._time(stamp), motion))
        self.counts["frames"] += 1

    def _log_turn(self, t: float, turn: int, latency_ms: float) -> None:
        import rerun as rr

        self.rec.set_time(TIMELINE, duration=t)
        self.rec.log("turns", rr.TextLog(f"turn {turn}: first frame {latency_ms:.0f} ms after the turn's end"))
        self.rec.log("timing/turn", rr.Scalars(float(turn)))
        self.rec.set_time(TIMELINE, duration=t + 1.0)
        self.rec.log("timing/latency_ms", rr.Scalars(latency_ms))
        self.counts["turns"] += 1

    def _on_audio(self, who: str, msg: AudioChunk) -> None:
        try:
            mono = to_mono_16k(np.asarray(msg.data, np.float32), int(msg.sample_rate), int(msg.channels))
        except InputError:
            return
        t, mm = envelope(Audio(mono, self._time(stamp_to_sec(msg.header.stamp))))
        if t.size:
            self.speech[who].append((t, mm))
        self.counts["audio_chunks"] += 1

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        import rerun as rr

        t = self._time(stamp_to_sec(msg.header.stamp))
        self.rec.set_time(TIMELINE, duration=t)
        for st in msg.status:
            node = st.name.split("/")[-1]
            for kv in st.values:
                try:
                    value = float(kv.value)
                except ValueError:
                    continue
                if not np.isfinite(value):
                    continue
                if st.name == "timar/agent" and kv.key == "output_delay" and not self.fixed_delay:
                    self.output_delay = value
                self.rec.log(f"diagnostics/{node}/{kv.key}", rr.Scalars(value))
        self.counts["diagnostics"] += 1

    def flush(self) -> None:
        """Send what was buffered since the last flush."""
        import rerun as rr

        for role, rows in self.frames.items():
            if not rows:
                continue
            self.frames[role] = []
            rows.sort(key=lambda r: r[0])
            times = np.array([r[0] for r in rows])
            motion = np.stack([r[1] for r in rows])
            if role not in self.loggers:
                self.loggers[role] = HeadLogger(self.rec, self.head, role, self.offsets[role])
            self.loggers[role].send(times, motion)
            values = curve_values(motion)
            index = [rr.TimeColumn(TIMELINE, duration=times)]
            for q in QUANTITIES:
                self.rec.send_columns(f"curves/{q}/{role}", indexes=index,
                                      columns=rr.Scalars.columns(scalars=values[q]))
        for who, pieces in self.speech.items():
            if not pieces:
                continue
            self.speech[who] = []
            t = np.concatenate([p[0] for p in pieces])
            mm = np.concatenate([p[1] for p in pieces])
            self.rec.send_columns(f"speech/{who}", indexes=[rr.TimeColumn(TIMELINE, duration=t)],
                                  columns=rr.Scalars.columns(scalars=mm))


def run_live(head: SkinnedHead, save: str | None = None, web: bool = False, seconds: float = 0.0,
             output_delay: float | None = None, ports: tuple[int, int] = (WEB_PORT, GRPC_PORT),
             namespace: str = "") -> int:
    """Run the live viewer node (in `namespace`, where the agent's topics are) until Ctrl-C or for `seconds`
    > 0: into the .rrd file `save`, the web viewer (`web`, on ports (web, gRPC)), or a spawned native viewer."""
    rec = new_recording("live")
    bp = blueprint(list(ROLES), sorted(AUDIO_TOPICS), with_audio=False)
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        rec.save(save, default_blueprint=bp)
    elif web:
        print(f"web viewer: {serve_web(rec, bp, *ports)}  (Ctrl-C ends)", flush=True)
    else:
        spawn_viewer(rec, bp)
    log_static(rec, list(ROLES), sorted(AUDIO_TOPICS))
    start = time.monotonic()
    counts: dict[str, int] = {}

    def until(node: LiveView) -> bool:
        return seconds > 0 and time.monotonic() - start >= seconds

    def on_exit(node: LiveView) -> None:
        node.flush()
        counts.update(node.counts)

    run_node(lambda: LiveView(head, rec, output_delay, namespace=namespace), until=until, on_exit=on_exit)
    rec.flush()
    if save:
        rec.disconnect()
    print("received " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), flush=True)
    return 0
