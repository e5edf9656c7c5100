"""A stand-in dialogue partner: user/audio in, the next line of a script out on agent/say whenever the user has
spoken and paused. It does not understand anything: it only decides when to talk (voice activity on the user's
audio, timar_model.runtime.responder), so the robot can hold a conversation without a dialogue system. Replace
it with one that publishes std_msgs/String on agent/say.

A lifecycle node (autostart by default):
configure   read the script, load the voice activity detector, create the agent/say publisher
activate    subscribe to user/audio and agent/speaking (it never talks while that is true)
deactivate  unsubscribe (the detector starts afresh on the next activate)
cleanup     release the detector and the publisher
"""

from __future__ import annotations

import numpy as np
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from std_msgs.msg import Bool, String
from timar_msgs.msg import AudioChunk

from timar_model.runtime.responder import Reply, ResponderConfig, Script, TurnTaking, read_script
from timar_model.runtime.vad import VadConfig, VadInputError

from . import qos
from .convert import stamp_to_sec
from .params import Param, declare_params, resolve_path
from .spin import run_lifecycle_node

DEFAULTS = ResponderConfig()
VAD = VadConfig()

PARAMS = (
    Param("autostart", True, "configure and activate at start (else a lifecycle manager does)", change="restart"),
    Param("script", "config/responder_script.txt",
          "text file of replies, one per line, # comments; relative paths from TIMAR_ROOT"),
    Param("loop", True, "start the script again after its last line (else stop replying)", change="live"),
    Param("pause", DEFAULTS.pause, "s of user silence that ends a user turn and triggers the reply",
          range=(0.1, 10.0), change="live"),
    Param("min_user_speech", DEFAULTS.min_user_speech,
          "s; shorter user turns (a 'mhm') get no reply", range=(0.0, 30.0), change="live"),
    Param("vad_backend", VAD.backend, "voice activity detector: silero if installed (auto), silero or energy",
          choices=("auto", "silero", "energy")),
    Param("vad_threshold", VAD.threshold, "silero speech probability that starts speech (it continues down to "
          "0.15 less)", range=(0.2, 0.95)),
    Param("vad_energy_threshold_db", VAD.energy_threshold_db,
          "dBFS; quietest level that counts as speech (energy backend)", range=(-90.0, 0.0)),
    Param("vad_min_speech", VAD.min_speech, "s of voice before the user counts as speaking", range=(0.0, 5.0)),
    Param("audio_reliability", "reliable", "QoS reliability of the user/audio subscription",
          choices=tuple(qos.RELIABILITY)),
)


class Responder(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("responder", **kwargs)
        self.p = declare_params(self, PARAMS, on_change=self._on_live_change,
                                configured=lambda: self.turns is not None)
        self.turns: TurnTaking | None = None
        self.pub = None
        self._subs: list = []
        self._script_done_logged = False

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        path = resolve_path(p["script"])
        try:
            lines = read_script(path)
            vad = VadConfig(backend=p["vad_backend"], threshold=p["vad_threshold"],
                            hold_threshold=max(0.05, p["vad_threshold"] - 0.15),
                            energy_threshold_db=p["vad_energy_threshold_db"], min_speech=p["vad_min_speech"])
            self.turns = TurnTaking(Script(lines, loop=p["loop"]),
                                    ResponderConfig(pause=p["pause"], min_user_speech=p["min_user_speech"], vad=vad))
        except (OSError, ValueError, RuntimeError) as e:  # no script / empty script / silero missing
            self.get_logger().error(f"responder: {e}")
            self.turns = None
            return TransitionCallbackReturn.FAILURE
        self.pub = self.create_lifecycle_publisher(String, "agent/say", qos.profile("agent/say"))
        self.get_logger().info(
            f"stand-in dialogue partner (not a dialogue system): says the next of {len(lines)} lines of {path} "
            f"when the user has spoken >= {p['min_user_speech']} s and paused {p['pause']} s "
            f"(voice activity: {self.turns.vad.backend})"
        )
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._subs = [
            self.create_subscription(AudioChunk, "user/audio", self._on_audio, qos.audio(self.p["audio_reliability"])),
            self.create_subscription(Bool, "agent/speaking", self._on_speaking, qos.profile("agent/speaking")),
        ]
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._unsubscribe()
        self.turns.vad.reset()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._release()
        return super().on_shutdown(state)

    def _unsubscribe(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []

    def _release(self) -> None:
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
        self.pub, self.turns = None, None

    def _on_live_change(self, changes: dict) -> str | None:
        if self.turns is None:
            return None  # used at the next configure
        if "pause" in changes:
            self.turns.set_pause(changes["pause"])
        if "min_user_speech" in changes:
            self.turns.set_min_user_speech(changes["min_user_speech"])
        if "loop" in changes:
            self.turns.script.loop = bool(changes["loop"])
            self._script_done_logged = False
        return None

    # ------------------------------------------------------------------ inputs
    def _on_audio(self, msg: AudioChunk) -> None:
        try:
            replies = self.turns.feed(np.asarray(msg.data, np.float32), stamp_to_sec(msg.header.stamp),
                                      msg.sample_rate, msg.channels)
        except VadInputError as e:
            self.get_logger().warn(f"dropped user/audio: {e}", throttle_duration_sec=2.0)
            return
        self._say(replies)

    def _on_speaking(self, msg: Bool) -> None:
        self._say(self.turns.set_agent_speaking(msg.data))

    def _say(self, replies: list[Reply]) -> None:
        for r in replies:
            self.pub.publish(String(data=r.text))
            self.get_logger().info(
                f"stand-in reply to the user's {r.user_end - r.user_start:.1f} s turn "
                f"({r.decided_at - r.user_end:.2f} s after it ended): {r.text!r}"
            )
        if self.turns.script.exhausted and not self._script_done_logged:
            self._script_done_logged = True
            self.get_logger().info("the script has run out (loop: false): no more replies")


def main(args: list[str] | None = None) -> None:
    run_lifecycle_node(Responder, args)


if __name__ == "__main__":
    main()
