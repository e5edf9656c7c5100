"""Microphone (sounddevice) -> user/audio (timar_msgs/AudioChunk), or a WAV file played as if it were one.
A lifecycle node: the device is found on configure, opened on activate and closed on deactivate.

source: mic   device by name (substring) or index ("" = the default input), sample_rate, block_size, channels;
              the input devices are listed on configure; none at all, or no match, fails the configure with
              one clear error.
source: file  `file` is published in real time in blocks of block_size (optionally looping), starting once
              user/audio has a subscriber (or after 30 s).
Each chunk is stamped with the time of its first sample; the agent resamples and downmixes.
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from timar_msgs.msg import AudioChunk

from timar_model.motion import SAMPLE_RATE

from . import qos
from .convert import sec_to_stamp
from .params import Param, declare_params, resolve_path
from .spin import run_lifecycle_node

PARAMS = (
    Param("autostart", True, "configure and activate at start (else a lifecycle manager does)", change="restart"),
    Param("source", "mic", "where the audio comes from", choices=("mic", "file")),
    Param("device", "", "input device name (substring) or index; '' = the system default"),
    Param("sample_rate", SAMPLE_RATE, "Hz; the capture rate (the agent resamples)", range=(8000, 192000)),
    Param("block_size", SAMPLE_RATE // 10, "samples per published chunk", range=(16, 192000)),
    Param("channels", 1, "channels captured (the agent downmixes)", range=(1, 32)),
    Param("file", "", "WAV played in real time when source = file"),
    Param("loop", False, "play the file again and again"),
    Param("frame_id", "microphone", "frame_id of the chunks"),
    Param("reliability", "reliable", "QoS reliability of user/audio (best_effort as many drivers offer)",
          choices=tuple(qos.RELIABILITY)),
)


def input_devices(sd) -> list[tuple[int, str, int]]:
    """(index, name, max input channels) of every device with inputs."""
    return [(i, d["name"], d["max_input_channels"]) for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


def pick_device(spec: str, devices: list[tuple[int, str, int]]) -> int | None:
    """'' -> None (system default); '3' -> index 3; otherwise the first device whose name contains spec."""
    if not devices:
        raise RuntimeError(
            "no audio input device found (sounddevice lists none: no microphone or PortAudio cannot see it); "
            "plug one in, or set source: file with file: <wav>"
        )
    spec = str(spec).strip()
    if spec == "":
        return None
    if spec.isdigit():
        idx = int(spec)
        if idx not in [d[0] for d in devices]:
            raise RuntimeError(f"device {idx} is not an input device; inputs: {devices}")
        return idx
    for idx, name, _ in devices:
        if spec.lower() in name.lower():
            return idx
    raise RuntimeError(f"device {spec!r} matches no input device; inputs: {devices}")


class AudioCapture(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("audio_capture", **kwargs)
        self.p = declare_params(self, PARAMS, configured=lambda: self.pub is not None)
        self.pub = None
        self.stream = None  # sounddevice.InputStream while active (mic)
        self.audio: np.ndarray | None = None  # (N, C) float32 (file)
        self.rate = 0
        self._device: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.chunks = 0

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        try:
            if p["source"] == "mic":
                import sounddevice as sd

                devices = input_devices(sd)
                for idx, name, ch in devices:
                    self.get_logger().info(f"input device {idx}: {name} ({ch} ch)")
                self._device = pick_device(p["device"], devices)
                self.rate = int(p["sample_rate"])
            else:
                import soundfile as sf

                path = resolve_path(p["file"])
                if not path.is_file():
                    raise RuntimeError(f"file not found: {path} (set file: to a WAV, or source: mic)")
                self.audio, self.rate = sf.read(str(path), dtype="float32", always_2d=True)
                self.get_logger().info(f"{path}: {self.audio.shape[0] / self.rate:.1f} s at {self.rate} Hz")
        except (RuntimeError, OSError) as e:  # no device / no PortAudio / unreadable file
            self.get_logger().error(f"audio_capture: {e}")
            return TransitionCallbackReturn.FAILURE
        self.pub = self.create_lifecycle_publisher(AudioChunk, "user/audio", qos.audio(p["reliability"]))
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the publisher before the first chunk
        try:
            self._start_mic() if self.p["source"] == "mic" else self._start_file()
        except Exception as e:  # noqa: BLE001 (PortAudio raises its own types): the device could not be opened
            self.get_logger().error(f"audio_capture: could not open the input: {e}")
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        return ret

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._close()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._close()
        self._release()
        return super().on_shutdown(state)

    def _release(self) -> None:
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
        self.pub, self.audio = None, None

    def _close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    # ------------------------------------------------------------------ publishing
    def _publish(self, stamp: float, block: np.ndarray, rate: int, channels: int) -> None:
        msg = AudioChunk(sample_rate=int(rate), channels=int(channels))
        msg.header.stamp = sec_to_stamp(stamp)
        msg.header.frame_id = self.p["frame_id"]
        msg.data = array.array("f", np.ascontiguousarray(block, dtype=np.float32).reshape(-1).tobytes())
        self.pub.publish(msg)
        self.chunks += 1

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _start_mic(self) -> None:
        import sounddevice as sd

        rate, channels = self.rate, int(self.p["channels"])

        def callback(indata, frames, time_info, status):  # PortAudio thread
            if status:
                self.get_logger().warn(f"audio input: {status}", throttle_duration_sec=5.0)
            # the block's first sample was captured (now - ADC delay - block duration) ago
            delay = max(0.0, time_info.currentTime - time_info.inputBufferAdcTime) if time_info else 0.0
            self._publish(self._now() - delay - frames / rate, indata.copy(), rate, channels)

        self.stream = sd.InputStream(device=self._device, samplerate=rate, blocksize=int(self.p["block_size"]),
                                     channels=channels, dtype="float32", callback=callback)
        self.stream.start()
        name = self._device if self._device is not None else "default"
        self.get_logger().info(f"capturing from device {name} at {rate} Hz, {channels} ch")

    def _start_file(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play_file, args=(self._stop,), daemon=True)
        self._thread.start()

    def _play_file(self, stop: threading.Event) -> None:
        block, n = int(self.p["block_size"]), self.audio.shape[0]
        t_wait = time.monotonic() + 30.0  # like a replayed recording: start once someone listens
        while self.pub.get_subscription_count() < 1 and time.monotonic() < t_wait:
            if stop.wait(0.05):
                return
        stop.wait(0.5)  # let the subscriber's side of the match settle
        while not stop.is_set():
            t0, w0 = self._now(), time.monotonic()
            for a in range(0, n, block):
                b = min(a + block, n)
                wait = w0 + b / self.rate - time.monotonic()  # a block goes out once its last sample is "recorded"
                if wait > 0 and stop.wait(wait):
                    return
                self._publish(t0 + a / self.rate, self.audio[a:b], self.rate, self.audio.shape[1])
            if not self.p["loop"]:
                self.get_logger().info("file finished")
                return


def main(args: list[str] | None = None) -> None:
    run_lifecycle_node(AudioCapture, args)


if __name__ == "__main__":
    main()
