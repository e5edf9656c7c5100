"""Microphone (sounddevice) -> user/audio (timar_msgs/AudioChunk), or a WAV file played as if it were one.

source: mic   device by name (substring) or index ("" = the default input), sample_rate, block_size, channels;
              the input devices are listed at start; none at all is a clear error.
source: file  `file` is published in real time in blocks of block_size (optionally looping), starting once
              user/audio has a subscriber (or after 30 s).
Each chunk is stamped with the time of its first sample; the agent resamples and downmixes.
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
from rclpy.node import Node
from timar_msgs.msg import AudioChunk

from .convert import sec_to_stamp
from .params import declare, resolve_path
from .spin import run_node


def input_devices(sd) -> list[tuple[int, str, int]]:
    """(index, name, max input channels) of every device with inputs."""
    return [(i, d["name"], d["max_input_channels"]) for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


def pick_device(spec: str, devices: list[tuple[int, str, int]]) -> int | None:
    """'' -> None (system default); '3' -> index 3; otherwise the first device whose name contains spec."""
    if not devices:
        raise RuntimeError(
            "no audio input device found (sounddevice lists none: no microphone or PortAudio cannot see it); "
            "plug one in, or set audio_capture.source: file with audio_capture.file: <wav>"
        )
    spec = str(spec).strip()
    if spec == "":
        return None
    if spec.isdigit():
        idx = int(spec)
        if idx not in [d[0] for d in devices]:
            raise RuntimeError(f"audio_capture.device {idx} is not an input device; inputs: {devices}")
        return idx
    for idx, name, _ in devices:
        if spec.lower() in name.lower():
            return idx
    raise RuntimeError(f"audio_capture.device {spec!r} matches no input device; inputs: {devices}")


class AudioCapture(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("audio_capture", **kwargs)
        p = self.p = declare(self, "audio_capture")
        if p["block_size"] <= 0 or p["sample_rate"] <= 0 or p["channels"] <= 0:
            raise ValueError("audio_capture: block_size, sample_rate and channels must be > 0")
        self.pub = self.create_publisher(AudioChunk, "user/audio", 100)
        self.stream = None
        self.chunks = 0
        if p["source"] == "mic":
            self._start_mic()
        elif p["source"] == "file":
            self._start_file()
        else:
            raise ValueError(f"audio_capture.source must be mic or file, got {p['source']!r}")

    def _publish(self, stamp: float, block: np.ndarray, rate: int, channels: int) -> None:
        msg = AudioChunk(sample_rate=int(rate), channels=int(channels))
        msg.header.stamp = sec_to_stamp(stamp)
        msg.header.frame_id = self.p["frame_id"]
        msg.data = array.array("f", np.ascontiguousarray(block, dtype=np.float32).reshape(-1).tobytes())
        self.pub.publish(msg)
        self.chunks += 1

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ microphone
    def _start_mic(self) -> None:
        import sounddevice as sd

        devices = input_devices(sd)
        for idx, name, ch in devices:
            self.get_logger().info(f"input device {idx}: {name} ({ch} ch)")
        device = pick_device(self.p["device"], devices)
        rate, channels = int(self.p["sample_rate"]), int(self.p["channels"])

        def callback(indata, frames, time_info, status):  # PortAudio thread
            if status:
                self.get_logger().warn(f"audio input: {status}", throttle_duration_sec=5.0)
            # the block's first sample was captured (now - ADC delay - block duration) ago
            delay = max(0.0, time_info.currentTime - time_info.inputBufferAdcTime) if time_info else 0.0
            self._publish(self._now() - delay - frames / rate, indata.copy(), rate, channels)

        self.stream = sd.InputStream(device=device, samplerate=rate, blocksize=int(self.p["block_size"]),
                                     channels=channels, dtype="float32", callback=callback)
        self.stream.start()
        name = device if device is not None else "default"
        self.get_logger().info(f"capturing from device {name} at {rate} Hz, {channels} ch")

    # ------------------------------------------------------------------ file
    def _start_file(self) -> None:
        import soundfile as sf

        path = resolve_path(self.p["file"])
        if not path.is_file():
            raise FileNotFoundError(f"audio_capture.file not found: {path}")
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
        self.audio, self.rate = audio, int(rate)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play_file, daemon=True)
        self._thread.start()
        self.get_logger().info(f"playing {path} ({audio.shape[0] / rate:.1f} s, {rate} Hz) as a microphone")

    def _play_file(self) -> None:
        block, n = int(self.p["block_size"]), self.audio.shape[0]
        t_wait = time.monotonic() + 30.0  # like a replayed recording: start once someone listens
        while self.pub.get_subscription_count() < 1 and time.monotonic() < t_wait:
            if self._stop.wait(0.05):
                return
        self._stop.wait(0.5)  # let the subscriber's side of the match settle
        while not self._stop.is_set():
            t0, w0 = self._now(), time.monotonic()
            for a in range(0, n, block):
                b = min(a + block, n)
                # a block goes out once its last sample has been "recorded"
                wait = w0 + b / self.rate - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                self._publish(t0 + a / self.rate, self.audio[a:b], self.rate, self.audio.shape[1])
            if not self.p["loop"]:
                self.get_logger().info("file finished")
                return

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
        if getattr(self, "_stop", None) is not None:
            self._stop.set()


def main(args: list[str] | None = None) -> None:
    run_node(AudioCapture, args, on_exit=lambda node: node.close(), fatal=(RuntimeError,))

if __name__ == "__main__":
    main()
