"""The TIMAR agent: live topics in, the agent's head motion out. A lifecycle node, thin glue over
timar_model.runtime.live.LiveAgent (turn assembly, generation, display timing).

configure   load the model, create the publishers and the diagnostics timer
activate    start the live loop, subscribe to the inputs
deactivate  unsubscribe, stop the live loop (a turn being generated is finished, not published)
cleanup     free the model
shutdown    from any state: release everything
error       `max_inference_failures` failed turns in a row (exceptions, out of memory, NaN output): the node
            deactivates itself through the state machine, on_deactivate returns ERROR, and on_error (the
            ErrorProcessing state) releases the model: the node is unconfigured, logs why, and a lifecycle
            manager (or `autostart` at the next start) can configure it again.

Faults of the inputs (bad audio, malformed messages, outlier stamps, clock jumps) are counted by kind in
/diagnostics and logged as rate-limited warnings by the live loop (LiveAgent); the node only converts.

Outputs: agent/motion_turn (each turn as soon as it is generated, ahead of its display time),
agent/head_motion + agent/head_pose (each frame at its display time), /diagnostics.
"""

from __future__ import annotations

import sys

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from timar_msgs.msg import AudioChunk, HeadMotion, HeadMotionTurn

from timar_model.runtime.live import GeneratedTurn, LiveAgent, LiveConfig, inference_threads

from . import qos
from .convert import head_motion_msg, motion_from_msg, motion_from_pose, pose_msg, sec_to_stamp, stamp_to_sec
from .params import Param, declare_params, resolve_path
from .spin import run_lifecycle_node

LIVE = LiveConfig()  # the live loop's defaults
# user_motion_source -> the view of the partner the model is given (timar_model/data/partner_motion.py)
PARTNER_VIEW = {"head_motion": "full", "head_pose": "pose", "none": "none"}

PARAMS = (
    Param("autostart", True, "configure and activate at start (else a lifecycle manager does)", change="restart"),
    Param("checkpoint", "models/timar-small-synth",
          "model folder (config.json + model.safetensors); relative paths from TIMAR_ROOT"),
    Param("device", "auto", "auto | cpu | cuda | cuda:N"),
    Param("backend", "torch", "torch: the PyTorch modules; onnxruntime: the graphs of `timar export` "
          "(docs/jetson.md)", choices=("torch", "onnxruntime")),
    Param("onnx_dir", "", "an export of the checkpoint (`timar export`) for backend onnxruntime; "
          "empty = export it at configure into a temporary folder"),
    Param("dtype", "auto", "precision of the transformer blocks; torch: float32 | bfloat16, "
          "onnxruntime: float32 | float16 (fp16 export) | int8 (int8 backbone); auto = bfloat16 where the "
          "device has it in hardware (torch), else float32",
          choices=("auto", "float32", "bfloat16", "float16", "int8")),
    Param("threads", 0, "torch CPU threads for inference; 0 = half the cores", range=(0, 1024)),
    Param("inference_cpu", LIVE.inference_cpu, "pin the inference thread to this CPU; -1 = no pinning",
          range=(-1, 1023)),
    Param("history_turns", -1, "previous turns the model sees (the window is history + 1); -1 = the model's own",
          range=(-1, 1024)),
    Param("sampling_steps", 0, "diffusion sampling steps; 0 = the model's own", range=(0, 1000)),
    Param("temperature", -1.0, "sampling temperature; < 0 = the model's own", range=(-1.0, 10.0), change="live"),
    Param("noise_correlation", -1.0, "frame-to-frame correlation of the sampling noise; < 0 = the model's own",
          range=(-1.0, 0.999), change="live"),
    Param("seed", 0, "sampling seed; -1 = a random one", range=(-1, 2**31 - 1)),
    Param("output_delay", LIVE.output_delay,
          "s; frame i of the turn starting at t is shown at t + i / fps + output_delay", range=(0.0, 10.0)),
    Param("publish_lead", LIVE.publish_lead, "s; frames are published this long before their display time",
          range=(0.0, 1.0)),
    Param("deadline", LIVE.deadline, "s after a turn's end when it is generated even if data is missing",
          range=(0.0, 2.0)),
    Param("expect_agent_audio", LIVE.expect_agent_audio,
          "wait for agent/audio to cover each turn (else absent = silence)"),
    Param("idle_timeout", LIVE.idle_timeout, "s; no more deadline turns once user input stopped this long ago",
          range=(0.0, 3600.0)),
    Param("motion_hold", LIVE.motion_hold, "s; lost motion (the partner's, or the agent's own for a failed or "
          "skipped turn): the last frame is held this long ...", range=(0.0, 60.0)),
    Param("motion_ease", LIVE.motion_ease, "s; ... then eased to the neutral frame over this long",
          range=(0.05, 60.0)),
    Param("max_inference_failures", LIVE.max_inference_failures,
          "failed turns in a row (exception, out of memory, NaN output) before the lifecycle error state",
          range=(1, 1000)),
    Param("user_motion_source", "head_motion", "the partner's motion input: head_motion (a face tracker), "
          "head_pose (rotation only) or none; unobserved parts reach the model as zeros, or as its absence "
          "codes if it has them (partner_absent_embed)",
          choices=tuple(PARTNER_VIEW)),
    Param("audio_reliability", "reliable", "QoS reliability of the audio subscriptions",
          choices=tuple(qos.RELIABILITY)),
    Param("motion_reliability", "reliable", "QoS reliability of the user motion subscription",
          choices=tuple(qos.RELIABILITY)),
    Param("frame_id", "agent_head", "frame_id of the output headers"),
    Param("diagnostics_period", 1.0, "s between /diagnostics messages", range=(0.05, 60.0)),
)


def pick_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


class TimarAgent(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("agent", **kwargs)
        self.p = declare_params(self, PARAMS, on_change=self._on_live_change, configured=lambda: self.live is not None)
        self.live: LiveAgent | None = None
        self._subs: list = []
        self._pubs: list = []
        self._timer = None
        self._fatal: str | None = None  # why the live loop gave up (set from its thread)
        # the live loop's thread cannot run a transition: it triggers this, the executor runs _on_fatal
        self._fatal_guard = self.create_guard_condition(self._on_fatal)

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
            import torch

            device = pick_device(p["device"])
            torch.set_num_threads(inference_threads(p["threads"]))
            gen = StreamingGenerator.from_pretrained(
                path,
                device=device,
                dtype=p["dtype"],
                context_turns=None if p["history_turns"] < 0 else p["history_turns"] + 1,
                num_sampling_steps=p["sampling_steps"] or None,
                temperature=None if p["temperature"] < 0 else p["temperature"],
                noise_correlation=None if p["noise_correlation"] < 0 else p["noise_correlation"],
                seed=None if p["seed"] < 0 else p["seed"],
                backend=p["backend"],
                onnx_dir=resolve_path(p["onnx_dir"]) if p["onnx_dir"] else None,
                partner_motion=PARTNER_VIEW[p["user_motion_source"]],
            )
        except Exception as e:  # bad checkpoint / device / dtype / window: stay unconfigured with the reason
            self.get_logger().error(f"could not load the model from {path}: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.live = LiveAgent(
            gen,
            LiveConfig(
                output_delay=p["output_delay"],
                publish_lead=p["publish_lead"],
                deadline=p["deadline"],
                expect_agent_audio=p["expect_agent_audio"],
                expect_user_motion=p["user_motion_source"] != "none",
                idle_timeout=p["idle_timeout"],
                motion_hold=p["motion_hold"],
                motion_ease=p["motion_ease"],
                max_inference_failures=p["max_inference_failures"],
                inference_cpu=p["inference_cpu"],
            ),
            clock=self._now,
            on_turn=self._publish_turn,
            on_frames=self._publish_frames,
            on_error=lambda text: self.get_logger().error(text),
            on_warning=lambda text: self.get_logger().warning(text),
            on_fatal=self._fatal_from_live,
        )
        self._fatal = None
        self.pub_turn = self.create_lifecycle_publisher(HeadMotionTurn, "agent/motion_turn", qos.per_turn())
        self.pub_motion = self.create_lifecycle_publisher(HeadMotion, "agent/head_motion", qos.frames())
        self.pub_pose = self.create_lifecycle_publisher(PoseStamped, "agent/head_pose", qos.frames())
        self._pubs = [self.pub_turn, self.pub_motion, self.pub_pose]
        # diagnostics report every state, inactive too: a plain publisher
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self._timer = self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(
            f"model {path} on {device} ({p['backend']}, {gen.dtype_name}), window {gen.context_turns} turns, "
            f"output delay {p['output_delay']} s"
        )
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        audio_qos = qos.audio(p["audio_reliability"])
        self._subs = [
            self.create_subscription(AudioChunk, "user/audio", self._on_user_audio, audio_qos),
            self.create_subscription(AudioChunk, "agent/audio", self._on_agent_audio, audio_qos),
        ]
        motion_qos = qos.frames(p["motion_reliability"])
        if p["user_motion_source"] == "head_motion":
            self._subs.append(self.create_subscription(HeadMotion, "user/head_motion", self._on_motion, motion_qos))
        elif p["user_motion_source"] == "head_pose":
            self._subs.append(self.create_subscription(PoseStamped, "user/head_pose", self._on_pose, motion_qos))
        self.live.start()
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if not self.live.stop():
            self.get_logger().warn("a generation step outlived the stop timeout; it will not be published")
        ret = super().on_deactivate(state)
        if self._fatal is not None:  # on to ErrorProcessing: on_error releases the model
            return TransitionCallbackReturn.ERROR
        return ret

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """ErrorProcessing (a transition returned ERROR): release everything; SUCCESS -> unconfigured, from
        where the node can be configured again."""
        why = self._fatal or f"a transition from {state.label} failed"
        self.get_logger().error(f"lifecycle error: {why}; the model is released and the node is unconfigured "
                                "(configure it again to reload the model)")
        self._publish_diagnostics(DiagnosticStatus.ERROR, f"error: {why}")
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self.live is not None:
            self.live.stop()
        if self._pubs or self._timer is not None:
            self._release()
        self._fatal = None
        return super().on_error(state)

    def _fatal_from_live(self, message: str) -> None:
        """LiveAgent.on_fatal (its inference thread): hand over to the executor."""
        self._fatal = message
        self._fatal_guard.trigger()

    def _on_fatal(self) -> None:
        if self._fatal is None:
            return
        if self._state_machine.current_state[1] == "active":
            self.trigger_deactivate()  # returns ERROR -> ErrorProcessing -> on_error -> unconfigured
        else:
            self._fatal = None

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self.live is not None:
            self.live.stop()
        self._release()
        return super().on_shutdown(state)

    def _release(self) -> None:
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        self._pubs = []
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self.destroy_publisher(self.pub_diag)
            self._timer = None
        self.live = None  # frees the model
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _on_live_change(self, changes: dict) -> str | None:
        """temperature / noise_correlation: < 0 means the model's own value."""
        if self.live is None:
            return None  # used at the next configure
        cfg = self.live.gen.config
        try:
            self.live.set_sampling(
                temperature=(cfg.temperature if changes["temperature"] < 0 else changes["temperature"])
                if "temperature" in changes else None,
                noise_correlation=(
                    cfg.noise_correlation if changes["noise_correlation"] < 0 else changes["noise_correlation"]
                ) if "noise_correlation" in changes else None,
            )
        except ValueError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # every input is counted and reported (rate-limited, by kind) by the live loop; dropped ones too
    def _on_user_audio(self, msg: AudioChunk) -> None:
        self.live.add_user_audio(stamp_to_sec(msg.header.stamp), np.asarray(msg.data, np.float32),
                                 msg.sample_rate, msg.channels)

    def _on_agent_audio(self, msg: AudioChunk) -> None:
        self.live.add_agent_audio(stamp_to_sec(msg.header.stamp), np.asarray(msg.data, np.float32),
                                  msg.sample_rate, msg.channels)

    def _on_motion(self, msg: HeadMotion) -> None:
        try:
            m = motion_from_msg(msg)
        except ValueError as e:
            self.live.report_input_error("user/head_motion", str(e))
            return
        self.live.add_user_motion(stamp_to_sec(msg.header.stamp), m)

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            m = motion_from_pose(msg)
        except ValueError as e:
            self.live.report_input_error("user/head_pose", str(e))
            return
        self.live.add_user_motion(stamp_to_sec(msg.header.stamp), m)

    # ------------------------------------------------------------------ outputs (the live loop's threads)
    def _publish_turn(self, turn: GeneratedTurn) -> None:
        frame_id = self.p["frame_id"]
        msg = HeadMotionTurn(turn_index=turn.index, epoch=turn.epoch, fps=float(turn.fps))
        msg.header.stamp = sec_to_stamp(turn.frames[0].stamp)
        msg.header.frame_id = frame_id
        msg.frames = [head_motion_msg(f.motion, f.stamp, frame_id, f.turn_index, f.frame_index) for f in turn.frames]
        self.pub_turn.publish(msg)

    def _publish_frames(self, frames) -> None:
        frame_id = self.p["frame_id"]
        for f in frames:
            self.pub_motion.publish(head_motion_msg(f.motion, f.stamp, frame_id, f.turn_index, f.frame_index))
            self.pub_pose.publish(pose_msg(f.motion, f.stamp, frame_id))

    def _publish_diagnostics(self, level: bytes | None = None, message: str | None = None) -> None:
        live = self.live
        if live is None or self._timer is None:
            return
        active = live.running
        st = DiagnosticStatus(name="timar/agent", hardware_id="timar")
        st.level = DiagnosticStatus.OK if active and not live.degraded() else DiagnosticStatus.WARN
        st.message = "active" if active else "inactive"
        if live.fatal is not None:
            st.level, st.message = DiagnosticStatus.ERROR, f"error: {live.fatal}"
        if level is not None:
            st.level, st.message = level, message or st.message
        st.values = [
            KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v))
            for k, v in live.diagnostics().items()
        ]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


# Python hands the GIL to a waiting thread only every `switch interval` (5 ms by default); the inference
# thread needs it between torch ops while the executor and clock threads take it for every message.
GIL_SWITCH_INTERVAL_S = 0.0005


def main(args: list[str] | None = None) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    run_lifecycle_node(TimarAgent, args)


if __name__ == "__main__":
    main()
