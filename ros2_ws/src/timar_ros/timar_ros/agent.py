"""The TIMAR agent: live topics in, 25 fps agent head motion out (a lifecycle node).

configure: load the model (StreamingGenerator.from_pretrained) and create topics; activate: start feeding the
TurnAssembler; cleanup: free the model. Inference runs on a worker thread and a player thread publishes each
frame at its display stamp, so subscription callbacks never block.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from timar_msgs.msg import AudioChunk, HeadMotion

from timar_model.runtime.turns import AssemblerConfig, InputError, MotionPlayer, Turn, TurnAssembler

from .convert import head_motion_msg, motion_from_msg, motion_from_pose, pose_msg, stamp_to_sec
from .params import declare, resolve_path
from .spin import run_node


def pick_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"agent.device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def inference_threads(requested: int, cores: int | None = None) -> int:
    """torch CPU threads for the agent: `requested`, or for 0 half the cores (at least 1). On a 2-core machine
    running the whole graph, 1 thread gave turn end -> first frame p95 130 ms vs 169 ms with 2 (60 s demo)."""
    if requested < 0:
        raise ValueError(f"agent.threads must be >= 0 (0 = half the cores), got {requested}")
    if requested:
        return requested
    return max(1, (cores or os.cpu_count() or 1) // 2)


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


class TimarAgent(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("agent", **kwargs)
        self.p = declare(self, "agent")
        self.gen = None
        self.assembler: TurnAssembler | None = None
        self.player: MotionPlayer | None = None
        self._lock = threading.Lock()  # guards assembler + player
        self._active = False
        self._turns: queue.Queue[Turn | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._entities: list = []
        self.stats = {"turns_generated": 0, "input_errors": 0, "inference_errors": 0, "turns_skipped": 0}
        self._latency_first_frame: list[float] = []  # s, turn end -> first frame published
        self._latency_ready: list[float] = []  # s, turn end -> motion generated
        self._infer: list[float] = []
        self._turn_end: dict[tuple[int, int], float] = {}
        self._epoch = 0
        if self.p["autostart"]:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        from timar_model.runtime.streaming import StreamingGenerator

        p = self.p
        path = resolve_path(p["checkpoint"])
        if not (path / "config.json").is_file():
            self.get_logger().error(
                f"checkpoint not found: {path} (needs config.json + model.safetensors; train one with "
                "`timar train`, convert the public one with `timar convert-public`, or use the shipped "
                "models/timar-small-synth)"
            )
            return TransitionCallbackReturn.FAILURE
        try:
            device = pick_device(p["device"])
            import torch

            torch.set_num_threads(inference_threads(p["threads"]))
            self.gen = StreamingGenerator.from_pretrained(
                path,
                device=device,
                dtype=p["dtype"],
                context_turns=p["context_turns"] or None,
                num_sampling_steps=p["sampling_steps"] or None,
                temperature=None if p["temperature"] < 0 else p["temperature"],
                noise_correlation=None if p["noise_correlation"] < 0 else p["noise_correlation"],
                seed=p["seed"],
            )
        except Exception as e:  # bad checkpoint / device / dtype: stay unconfigured with a clear message
            self.get_logger().error(f"could not load the model from {path}: {e}")
            return TransitionCallbackReturn.FAILURE
        src = p["user_motion_source"]
        if src not in ("head_motion", "head_pose", "none"):
            self.get_logger().error(f"agent.user_motion_source: head_motion|head_pose|none, not {src!r}")
            return TransitionCallbackReturn.FAILURE
        self.assembler = TurnAssembler(
            AssemblerConfig(
                sample_rate=self.gen.sample_rate,
                fps=self.gen.frames_per_turn,
                deadline=p["deadline"],
                expect_agent_audio=p["expect_agent_audio"],
                expect_user_motion=src != "none",
                idle_timeout=p["idle_timeout"],
            )
        )
        self.player = MotionPlayer(
            fps=self.gen.frames_per_turn, output_delay=p["output_delay"], publish_lead=p["publish_lead"]
        )
        self.pub_motion = self.create_publisher(HeadMotion, "agent/head_motion", 50)
        self.pub_pose = self.create_publisher(PoseStamped, "agent/head_pose", 50)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        subs = [
            self.create_subscription(AudioChunk, "user/audio", self._on_user_audio, 100),
            self.create_subscription(AudioChunk, "agent/audio", self._on_agent_audio, 100),
        ]
        if src == "head_motion":
            subs.append(self.create_subscription(HeadMotion, "user/head_motion", self._on_motion, 200))
        elif src == "head_pose":
            subs.append(self.create_subscription(PoseStamped, "user/head_pose", self._on_pose, 200))
        timers = [
            self.create_timer(0.01, self._on_poll),
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics),
        ]
        self._entities = subs + timers + [self.pub_motion, self.pub_pose, self.pub_diag]
        self.get_logger().info(
            f"model {path} on {device} ({p['dtype']}), window {self.gen.context_turns} turns, "
            f"output delay {p['output_delay']} s"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._inference_loop, name="timar-inference", daemon=True),
            threading.Thread(target=self._player_loop, name="timar-player", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._active = True
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._stop.set()
        self._turns.put(None)
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = []
        with self._lock:
            self.assembler.reset()
            self.player.reset()
        self.gen.reset()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        for e in self._entities:
            self._destroy(e)
        self._entities = []
        self.gen = None  # frees the model
        self.assembler = self.player = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._active:
            self.on_deactivate(state)
        return TransitionCallbackReturn.SUCCESS

    def _destroy(self, e) -> None:
        for fn in (self.destroy_subscription, self.destroy_timer, self.destroy_publisher):
            try:
                if fn(e):
                    return
            except Exception:  # wrong kind of entity for this destroy_* function
                continue

    # ------------------------------------------------------------------ inputs
    def _feed(self, fn, *args) -> None:
        if not self._active:
            return
        with self._lock:
            try:
                fn(*args)
            except InputError as e:
                self.stats["input_errors"] += 1
                self.get_logger().warn(f"dropped input: {e}", throttle_duration_sec=2.0)
            self._emit_ready(None)

    def _on_user_audio(self, msg: AudioChunk) -> None:
        self._feed(
            self.assembler.add_user_audio, stamp_to_sec(msg.header.stamp), np.asarray(msg.data, np.float32),
            msg.sample_rate, msg.channels,
        )

    def _on_agent_audio(self, msg: AudioChunk) -> None:
        self._feed(
            self.assembler.add_agent_audio, stamp_to_sec(msg.header.stamp), np.asarray(msg.data, np.float32),
            msg.sample_rate, msg.channels,
        )

    def _on_motion(self, msg: HeadMotion) -> None:
        try:
            m = motion_from_msg(msg)
        except ValueError as e:
            self.stats["input_errors"] += 1
            self.get_logger().warn(f"dropped user/head_motion: {e}", throttle_duration_sec=2.0)
            return
        self._feed(self.assembler.add_user_motion, stamp_to_sec(msg.header.stamp), m)

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            m = motion_from_pose(msg)
        except ValueError as e:
            self.stats["input_errors"] += 1
            self.get_logger().warn(f"dropped user/head_pose: {e}", throttle_duration_sec=2.0)
            return
        self._feed(self.assembler.add_user_motion, stamp_to_sec(msg.header.stamp), m)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_poll(self) -> None:
        if self._active:
            with self._lock:
                self._emit_ready(self._now())

    def _emit_ready(self, now: float | None) -> None:  # caller holds the lock
        for turn in self.assembler.poll(now):
            self._turn_end[(turn.epoch, turn.index)] = turn.start_time + 1.0
            while len(self._turn_end) > 64:  # bounded even if frames of some turns never go out
                self._turn_end.pop(next(iter(self._turn_end)))
            self._turns.put(turn)

    # ------------------------------------------------------------------ inference + playback
    def _inference_loop(self) -> None:
        cpu = self.p["inference_cpu"]
        if cpu >= 0:  # keep generation on one core (put the other nodes elsewhere: runner.cpu_affinity)
            try:
                os.sched_setaffinity(threading.get_native_id(), {cpu})
            except (OSError, ValueError, AttributeError) as e:
                self.get_logger().warn(f"agent.inference_cpu {cpu}: could not pin the inference thread: {e}")
        while not self._stop.is_set():
            turn = self._turns.get()
            if turn is None:
                return
            if self._turns.qsize() > 2:  # fell behind: skip to stay real time (counted)
                self.stats["turns_skipped"] += 1
                continue
            if turn.epoch != self._epoch:  # the timeline was reset: new conversation context
                self._epoch = turn.epoch
                self.gen.reset()
                with self._lock:
                    self.player.reset()
            try:
                motion = self.gen.step(turn.user_speech, turn.user_motion, turn.agent_speech)
            except Exception as e:
                self.stats["inference_errors"] += 1
                self.get_logger().error(f"inference failed for turn {turn.index}: {e}")
                continue
            self._infer.append(self.gen.last_timings.get("total", float("nan")))
            self._latency_ready.append(self._now() - (turn.start_time + 1.0))
            self.stats["turns_generated"] += 1
            with self._lock:
                self.player.push(turn.index, turn.start_time, motion)

    def _player_loop(self) -> None:
        frame_id = self.p["frame_id"]
        while not self._stop.is_set():
            with self._lock:
                nxt = self.player.next_release_time() if self.player else None
            now = self._now()
            if nxt is None or nxt > now:
                time.sleep(0.005 if nxt is None else min(0.005, max(nxt - now, 0.0)))
                continue
            with self._lock:
                frames = self.player.due(self._now())
            for f in frames:
                msg = head_motion_msg(f.motion, f.stamp, frame_id, f.turn_index, f.frame_index)
                self.pub_motion.publish(msg)
                self.pub_pose.publish(pose_msg(f.motion, f.stamp, frame_id))
                if f.frame_index == 0:
                    end = self._turn_end.pop((self._epoch, f.turn_index), None)
                    if end is not None:
                        self._latency_first_frame.append(self._now() - end)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if self.assembler is None:
            return
        with self._lock:
            counters = self.assembler.counters_dict()
            player = dict(vars(self.player.counters))
        lat, ready, inf = self._latency_first_frame[-200:], self._latency_ready[-200:], self._infer[-200:]
        values = {
            **{f"assembler.{k}": v for k, v in counters.items()},
            **{f"player.{k}": v for k, v in player.items()},
            **self.stats,
            "output_delay": self.p["output_delay"],
            "latency_first_frame_ms_median": 1e3 * _percentile(lat, 50),
            "latency_first_frame_ms_p95": 1e3 * _percentile(lat, 95),
            "latency_ready_ms_p95": 1e3 * _percentile(ready, 95),
            "inference_ms_median": 1e3 * _percentile(inf, 50),
            "inference_ms_p95": 1e3 * _percentile(inf, 95),
            "queued_turns": self._turns.qsize(),
        }
        st = DiagnosticStatus(name="timar/agent", hardware_id="timar")
        late = counters["late_drops"] + player["dropped_frames"] + self.stats["turns_skipped"]
        st.level = DiagnosticStatus.OK if late == 0 and self._active else DiagnosticStatus.WARN
        st.message = "active" if self._active else "inactive"
        st.values = [
            KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()
        ]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


def _deactivate(node: TimarAgent) -> None:
    if node._active:
        node.on_deactivate(None)


# Python hands the GIL to a waiting thread only every `switch interval` (5 ms by default). The inference thread
# needs it between torch ops (a few hundred per turn) while the executor and player threads take it for every
# message and timer. In 60 s demo sessions (1 inference thread) 0.5 ms gave turn end -> first frame p95
# 130/134 ms vs 154 ms at the default (scripts/demo.py --seconds 60 --param agent.threads=1), one run each,
# which is within this machine's run-to-run noise.
GIL_SWITCH_INTERVAL_S = 0.0005


def main(args: list[str] | None = None) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    run_node(TimarAgent, args, on_exit=_deactivate)

if __name__ == "__main__":
    main()
