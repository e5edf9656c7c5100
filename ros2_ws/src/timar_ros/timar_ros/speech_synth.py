"""The robot's voice: text on agent/say -> espeak-ng -> agent/audio (for the agent's lips) and the speaker.
A lifecycle node, thin glue over timar_model.runtime.speech_out (utterance queue, chunk scheduler, playout).

configure   build the synthesiser (voice checked), find the output device (sink speaker), create the publishers
activate    open the output stream, start the synthesis worker, subscribe to agent/say, agent/stop_speaking
            (and user/audio with stop_on_user_speech)
deactivate  cancel what is not yet published, unsubscribe, stop the worker, close the stream (the speaker
            stops at once, also in the middle of what was published)
cleanup     release the synthesiser and the publishers
shutdown    from any state: release everything

Inputs: agent/say (std_msgs/String: queued and spoken after what is already queued; an empty string cancels),
agent/stop_speaking (std_msgs/Empty: cancels), user/audio (only with stop_on_user_speech).
Outputs: agent/audio (timar_msgs/AudioChunk, chunks of chunk_samples (0.1 s) stamped on this node's clock,
the conversation clock, exactly on the 16 kHz sample grid, frame_id "speech_synth"), agent/speaking
(std_msgs/Bool, latched), /diagnostics (timar/speech_synth: one status per utterance state change, queued /
synthesizing / playing / done / cancelled / failed, with its synthesis and latency ms, and a periodic
summary).

Timing. An utterance starts when its synthesis is done, or when the previous one ends if that is later; its
chunks are published up to `lookahead` s before their stamps. The agent shows the lip motion of the sample
stamped s at s + output_delay, and the speaker plays that sample at s + output_delay, so sound and lips line
up. Latency, say -> first sample at the speaker = synthesis time + wait for the previous utterance +
output_delay. agent/speaking is true from an utterance's first stamp + output_delay to its last.

Cancel (stop_speaking, an empty say, barge-in). A published chunk is committed: the agent already uses it.
A cancel stops publishing new chunks at once and the utterance ends at a chunk boundary; what was published
is still played, so the speaker's output equals agent/audio. The speaker therefore falls silent at most
lookahead + one chunk + output_delay after the cancel (1.65 s with the defaults).

output_delay must be the agent's: the same name and default (timar_model.runtime.turns.OUTPUT_DELAY). One key
sets both nodes from a params file through a `/**` section, which applies to every node that declares the
name:

    /**:
      ros__parameters:
        output_delay: 1.25

sink: speaker plays through sounddevice (PortAudio): each sample leaves the DAC at its stamp + output_delay
(the stream's DAC time against this node's clock), silence where nothing is scheduled. sink: none only
publishes (tests, or a robot whose audio is played elsewhere from agent/audio). A missing output device fails
the configure with one error that lists the outputs.

Barge-in (stop_on_user_speech: true): a voice activity detector (timar_model.runtime.vad: silero-vad, energy
fallback) listens to user/audio, and a speech start of the user cancels what the robot is saying and what it
had queued. The speaker falls silent about vad_min_speech + lookahead + one chunk + output_delay after the
user's speech starts (the detector needs vad_min_speech s of it). The microphone must not hear the robot's own
speaker (echo cancellation or a headset), otherwise the robot interrupts itself.
"""

from __future__ import annotations

import array
import time

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from std_msgs.msg import Bool, Empty, String
from timar_msgs.msg import AudioChunk

from timar_model.motion import SAMPLE_RATE
from timar_model.runtime.speech_out import (
    CHUNK_SAMPLES,
    LOOKAHEAD,
    MAX_LOOKAHEAD,
    ClockOffset,
    Playout,
    QueueFull,
    SpeechChunk,
    SpeechOut,
    SpeechOutConfig,
    Utterance,
)
from timar_model.runtime.turns import OUTPUT_DELAY
from timar_model.runtime.vad import BACKENDS, VadConfig, VadInputError, VoiceActivity

from . import qos
from .convert import stamp_to_sec
from .params import Param, declare_params
from .spin import run_lifecycle_node

VAD = VadConfig()

PARAMS = (
    Param("autostart", True, "configure and activate at start (else a lifecycle manager does)", change="restart"),
    Param("voice", "en-us", "espeak-ng voice (en-us, en-us+f3, en-gb-scotland, ...); used from the next say on",
          change="live"),
    Param("rate_wpm", 170.0, "speaking rate, words per minute", range=(80.0, 450.0), change="live"),
    Param("pitch", 50.0, "espeak-ng pitch (0-99, 50 = the voice's own)", range=(0.0, 99.0), change="live"),
    Param("volume", 1.0, "gain of the synthesised speech (1 = normal)", range=(0.0, 2.0), change="live"),
    Param("chunk_samples", CHUNK_SAMPLES, "samples per agent/audio chunk at 16 kHz", range=(16, 16000)),
    Param("lookahead", LOOKAHEAD, "s; a chunk is published at most this long before its stamp (a cancel takes "
          "effect after the published ones)", range=(0.0, MAX_LOOKAHEAD)),
    Param("output_delay", OUTPUT_DELAY, "s; the speaker plays the sample stamped s at s + output_delay (the "
          "agent's output_delay: set both with one `/**` key)", range=(0.0, 10.0)),
    Param("speaker_offset", 0.0, "s; the speaker only plays this much later (or earlier, < 0): lip-sync calibration "
          "against the model's own jaw lag, which `timar eval-bag` measures as the sync lag", range=(-0.5, 0.5)),
    Param("max_queued", 16, "utterances waiting or being synthesised; more are refused", range=(1, 1000)),
    Param("sink", "speaker", "speaker = play through sounddevice; none = publish only", choices=("speaker", "none")),
    Param("device", "", "output device name (substring) or index; '' = the system default"),
    Param("device_latency", 0.1, "s; the output device's buffer: a longer one survives CPU load (its delay is "
          "compensated; keep it below lookahead + output_delay)", range=(0.005, 1.0)),
    Param("stop_on_user_speech", False, "barge-in: stop speaking when the user starts speaking (user/audio)"),
    Param("vad_backend", "auto", "voice activity detector of the barge-in: auto = silero if installed, else "
          "energy", choices=BACKENDS),
    Param("vad_min_speech", VAD.min_speech, "s of user speech before a barge-in", range=(0.0, 5.0)),
    Param("audio_reliability", "reliable", "QoS reliability of the user/audio subscription (barge-in)",
          choices=tuple(qos.RELIABILITY)),
    Param("frame_id", "speech_synth", "frame_id of agent/audio"),
    Param("diagnostics_period", 1.0, "s between periodic /diagnostics summaries", range=(0.05, 60.0)),
)

RELEASE_PERIOD = 0.02  # s between release polls (chunks are due every chunk_samples / 16000 s)
VOICE_PARAMS = ("voice", "rate_wpm", "pitch", "volume")


def output_devices(sd) -> list[tuple[int, str, int]]:
    """(index, name, max output channels) of every device with outputs."""
    return [(i, d["name"], d["max_output_channels"]) for i, d in enumerate(sd.query_devices())
            if d["max_output_channels"] > 0]


def _listing(devices: list[tuple[int, str, int]]) -> str:
    return ", ".join(f"{i} '{name}' ({ch} ch)" for i, name, ch in devices)


def pick_output_device(spec: str, devices: list[tuple[int, str, int]]) -> int | None:
    """'' -> None (the system default); '3' -> index 3; otherwise the first output whose name contains spec.
    Raises RuntimeError with one line that says how to pick a device."""
    hint = "pick one with device:=NAME (a part of its name) or device:=INDEX, or set sink: none to publish " \
           "agent/audio only"
    if not devices:
        raise RuntimeError("no audio output device found (sounddevice lists none: no speaker, or PortAudio "
                           f"cannot see it); connect one and {hint}")
    spec = str(spec).strip()
    if spec == "":
        return None
    if spec.isdigit():
        if int(spec) not in [d[0] for d in devices]:
            raise RuntimeError(f"device {spec} is not an output device; outputs: {_listing(devices)}; {hint}")
        return int(spec)
    for idx, name, _ in devices:
        if spec.lower() in name.lower():
            return idx
    raise RuntimeError(f"device {spec!r} matches no output device; outputs: {_listing(devices)}; {hint}")


def _kv(values: dict) -> list[KeyValue]:
    return [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]


class SpeechSynth(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("speech_synth", **kwargs)
        self.p = declare_params(self, PARAMS, on_change=self._on_live_change, configured=lambda: self.out is not None)
        self.out: SpeechOut | None = None
        self.playout: Playout | None = None
        self.vad: VoiceActivity | None = None
        self.stream = None  # sounddevice.OutputStream while active (sink speaker)
        self._device: int | None = None
        self._stream_latency = 0.0  # s; the device's reported output latency (when DAC times are missing)
        self._offset = ClockOffset()  # conversation clock - device clock
        self._subs: list = []
        self._pubs: list = []
        self._release_timer = None
        self._diag_timer = None
        self._speaking: bool | None = None
        self._last: Utterance | None = None  # the latest status change, for the periodic summary
        self.counters = {"barge_ins": 0, "last_barge_in_silence_s": float("nan"), "output_status_flags": 0,
                         "rejected_user_audio": 0}

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        try:
            tts = self._make_tts(p.as_dict())
            if p["sink"] == "speaker":
                self._device = self._find_device(p["device"])
            if p["stop_on_user_speech"]:
                self.vad = VoiceActivity(VadConfig(backend=p["vad_backend"], min_speech=p["vad_min_speech"]))
        except (ValueError, RuntimeError, OSError) as e:  # bad voice, no device / PortAudio, no VAD backend
            self.get_logger().error(f"speech_synth: {e}")
            return TransitionCallbackReturn.FAILURE
        cfg = SpeechOutConfig(chunk_samples=p["chunk_samples"], lookahead=p["lookahead"],
                              output_delay=p["output_delay"], max_queued=p["max_queued"])
        if p["sink"] == "speaker" and p["device_latency"] + RELEASE_PERIOD >= p["lookahead"] + p["output_delay"]:
            self.get_logger().warn(
                f"device_latency {p['device_latency']} s leaves no time between publishing a chunk and playing it "
                f"(lookahead {p['lookahead']} s + output_delay {p['output_delay']} s): its start will be cut")
        self.out = SpeechOut(tts, cfg, clock=self._now)
        self.pub_audio = self.create_lifecycle_publisher(AudioChunk, "agent/audio", qos.audio())
        self.pub_speaking = self.create_lifecycle_publisher(Bool, "agent/speaking", qos.latched())
        self._pubs = [self.pub_audio, self.pub_speaking]
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._publish_summary)
        self.get_logger().info(
            f"voice {p['voice']} at {p['rate_wpm']:g} wpm, sink {p['sink']}, lookahead {p['lookahead']} s, "
            f"output delay {p['output_delay']} s" + (f", barge-in VAD {self.vad.backend}" if self.vad else ""))
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the publishers before the first chunk
        if self.p["sink"] == "speaker":
            try:
                self._open_stream()
            except Exception as e:  # noqa: BLE001 (PortAudio raises its own types): the device could not be opened
                self.get_logger().error(
                    f"speech_synth: could not open the output device: {e}; pick another with device:=NAME "
                    "or set sink: none")
                self._close_stream()
                super().on_deactivate(state)
                return TransitionCallbackReturn.FAILURE
        self.out.start()
        self._subs = [
            self.create_subscription(String, "agent/say", self._on_say, qos.commands()),
            self.create_subscription(Empty, "agent/stop_speaking", self._on_stop, qos.commands()),
        ]
        if self.vad is not None:
            self.vad.reset()
            self._subs.append(self.create_subscription(
                AudioChunk, "user/audio", self._on_user_audio, qos.audio(self.p["audio_reliability"])))
        self._release_timer = self.create_timer(RELEASE_PERIOD, self._tick)
        self._set_speaking(False)
        self.get_logger().info("active")
        return ret

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_activity()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._release_timer is not None:  # shut down while active
            self._stop_activity()
        self._release()
        return super().on_shutdown(state)

    def _stop_activity(self) -> None:
        """Unsubscribe, cancel what is not yet published, stop the worker and the stream (deactivate)."""
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self._release_timer is not None:
            self.destroy_timer(self._release_timer)
            self._release_timer = None
        self.out.cancel(reason="deactivated")
        if not self.out.stop():
            self.get_logger().warn("a synthesis outlived the stop timeout; its result is discarded")
        self._close_stream()
        self._set_speaking(False)
        self._publish_changes()
        self._speaking = None

    def _release(self) -> None:
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        self._pubs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self.destroy_publisher(self.pub_diag)
            self._diag_timer = None
        self.out, self.vad = None, None

    def _make_tts(self, values: dict):
        from timar_model.tts import EspeakTTS

        return EspeakTTS(voice=values["voice"], rate_wpm=values["rate_wpm"], pitch=values["pitch"],
                         volume=values["volume"])

    def _on_live_change(self, changes: dict) -> str | None:
        """A new voice / rate / pitch / volume: checked by building the synthesiser, used for the next say."""
        if not any(k in changes for k in VOICE_PARAMS):
            return None
        try:
            tts = self._make_tts({**self.p.as_dict(), **changes})
        except (ValueError, RuntimeError) as e:
            return str(e)
        if self.out is not None:
            self.out.set_tts(tts)
        return None

    # ------------------------------------------------------------------ the speaker
    def _find_device(self, spec: str) -> int | None:
        try:
            import sounddevice as sd
        except OSError as e:  # the PortAudio library is missing
            raise RuntimeError(f"sink speaker needs PortAudio ({e}): apt-get install libportaudio2, or set "
                               "sink: none to publish agent/audio only") from e
        if self.stream is None and hasattr(sd, "_terminate"):  # see devices plugged in since the last configure
            sd._terminate()
            sd._initialize()
        devices = output_devices(sd)
        for idx, name, ch in devices:
            self.get_logger().info(f"output device {idx}: {name} ({ch} ch)")
        return pick_output_device(spec, devices)

    def _open_stream(self) -> None:
        """Open the output at 16 kHz mono if the device takes it, else at its own rate / 2 channels."""
        import sounddevice as sd

        info = sd.query_devices(self._device, "output") if self._device is not None else sd.query_devices(
            kind="output")
        rates = list(dict.fromkeys([SAMPLE_RATE, int(info["default_samplerate"])]))
        channels = [1, 2] if info["max_output_channels"] >= 2 else [1]
        error: Exception | None = None
        for rate in rates:
            for ch in channels:
                try:
                    self.playout = Playout(output_delay=self.p["output_delay"] + self.p["speaker_offset"],
                                           output_rate=rate)
                    self._offset = ClockOffset()
                    self.stream = sd.OutputStream(device=self._device, samplerate=rate, channels=ch, dtype="float32",
                                                  latency=self.p["device_latency"], callback=self._play)
                except Exception as e:  # noqa: BLE001 (PortAudio's own error types)
                    error = e
                    continue
                self._stream_latency = float(self.stream.latency)
                self.stream.start()
                self.get_logger().info(f"playing on {info['name']} at {rate} Hz, {ch} ch, "
                                       f"device latency {1000 * self._stream_latency:.1f} ms")
                return
        raise RuntimeError(str(error))

    def _close_stream(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None
        if self.playout is not None:
            self.playout.reset()

    def _play(self, outdata, frames, time_info, status) -> None:  # PortAudio thread
        """Fill the device's buffer with what is due when it leaves the DAC: the DAC time of its first sample
        on the device clock, moved to the conversation clock by the filtered offset between the two."""
        now = self._now()
        if status:
            self.counters["output_status_flags"] += 1
        device_now, dac = time_info.currentTime, time_info.outputBufferDacTime
        if device_now <= 0 or not 0.0 <= dac - device_now < 1.0:  # a host API that reports no times
            device_now = time.monotonic()
            dac = device_now + self._stream_latency
        offset = self._offset.update(now - device_now, device_now)
        outdata[:] = self.playout.read(frames, dac + offset)[:, None]

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_say(self, msg: String) -> None:
        try:
            uid = self.out.say(msg.data)
        except QueueFull as e:
            self.get_logger().warn(f"say refused: {e}")
            return
        if uid is None:
            self.get_logger().info("say '': cancel")
        self._publish_changes()

    def _on_stop(self, msg: Empty) -> None:
        self.out.cancel(reason="stop request")
        self._publish_changes()

    def _on_user_audio(self, msg: AudioChunk) -> None:
        try:
            events = self.vad.feed(np.asarray(msg.data, np.float32), stamp_to_sec(msg.header.stamp),
                                   int(msg.sample_rate), int(msg.channels))
        except VadInputError as e:
            self.counters["rejected_user_audio"] += 1
            self.get_logger().warn(f"dropped user/audio: {e}", throttle_duration_sec=2.0)
            return
        for ev in events:
            if ev.kind != "start" or not self.out.cancel(reason=f"barge-in: the user started speaking at "
                                                                f"{ev.stamp:.3f}"):
                continue
            until = self.out.released_until
            silent_at = ev.stamp if until is None else until + self.p["output_delay"]
            self.counters["barge_ins"] += 1
            self.counters["last_barge_in_silence_s"] = max(0.0, silent_at - ev.stamp)
            self.get_logger().info(f"barge-in: the user started speaking at {ev.stamp:.3f}; the speaker is silent "
                                   f"{self.counters['last_barge_in_silence_s']:.2f} s later")
        self._publish_changes()

    # ------------------------------------------------------------------ outputs
    def _tick(self) -> None:
        now = self._now()
        for chunk in self.out.poll(now):
            self._publish_chunk(chunk)
            if self.playout is not None and self.stream is not None:
                self.playout.add(chunk.first_sample, chunk.samples)
        self._set_speaking(self.out.speaking(now))
        self._publish_changes()

    def _publish_chunk(self, chunk: SpeechChunk) -> None:
        msg = AudioChunk(sample_rate=chunk.sample_rate, channels=1)
        ns = chunk.stamp_ns
        msg.header.stamp = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        msg.header.frame_id = self.p["frame_id"]
        msg.data = array.array("f", chunk.samples.tobytes())
        self.pub_audio.publish(msg)

    def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            self.pub_speaking.publish(Bool(data=speaking))

    def _utterance_status(self, u: Utterance) -> DiagnosticStatus:
        st = DiagnosticStatus(name="timar/speech_synth", hardware_id="timar")
        st.level = DiagnosticStatus.ERROR if u.state == "failed" else DiagnosticStatus.OK
        st.message = f"utterance {u.id}: {u.state}" + (f" ({u.reason})" if u.reason else "")
        ms = lambda s: float("nan") if s is None else 1000.0 * s  # noqa: E731
        st.values = _kv({
            "utterance": u.id, "state": u.state, "text": u.text[:120],
            "synthesis_ms": ms(u.synthesis_seconds), "latency_ms": ms(u.latency),
            "start": "" if u.start is None else f"{u.start:.6f}", "samples": u.samples, "released": u.released,
            "audio_s": u.audio_seconds, "reason": u.reason,
        })
        return st

    def _publish_changes(self) -> None:
        if self.out is None:
            return
        for u in self.out.pop_changes():
            self._last = u
            msg = DiagnosticArray(status=[self._utterance_status(u)])
            msg.header.stamp = self.get_clock().now().to_msg()
            self.pub_diag.publish(msg)

    def _publish_summary(self) -> None:
        out = self.out
        if out is None:
            return
        active = self._release_timer is not None
        st = DiagnosticStatus(name="timar/speech_synth", hardware_id="timar")
        st.level = DiagnosticStatus.OK if active else DiagnosticStatus.WARN
        st.message = ("active" if active else "inactive") + (", speaking" if self._speaking else "")
        values = {**out.counters_dict(), **self.counters, "cancel_reaction_max_s": out.config.cancel_reaction,
                  "output_delay": self.p["output_delay"], "speaker_offset": self.p["speaker_offset"]}
        if self.playout is not None:
            values.update({f"playout_{k}": v for k, v in vars(self.playout.counters).items()})
        if self._last is not None:
            values.update({"last_utterance": self._last.id, "last_state": self._last.state,
                           "last_synthesis_ms": float("nan") if self._last.synthesis_seconds is None
                           else 1000.0 * self._last.synthesis_seconds,
                           "last_latency_ms": float("nan") if self._last.latency is None
                           else 1000.0 * self._last.latency})
        st.values = _kv(values)
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


def main(args: list[str] | None = None) -> None:
    run_lifecycle_node(SpeechSynth, args)


if __name__ == "__main__":
    main()
