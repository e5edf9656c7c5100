"""Microphone (sounddevice) -> user/audio (timar_msgs/AudioChunk), or a WAV file played as if it were one.
A lifecycle node: the device is found on configure, opened on activate and closed on deactivate.

source: mic   device by name (substring) or index ("" = the default input), sample_rate, block_size, channels;
              the input devices are listed on configure; none at all, or no match, fails the configure with
              one clear error, and so does a device that cannot be opened on activate.
source: file  `file` is published in real time in blocks of block_size (optionally looping), starting once
              user/audio has a subscriber (or after 30 s).
Each chunk is stamped with the time of its first sample; the agent resamples and downmixes.

Microphone stamps count samples (BlockStamper): stamp = anchor + samples so far / rate, so consecutive chunks
are contiguous however irregularly the audio server hands the blocks over (PulseAudio delivers them in
bursts). The anchor is the earliest wall-clock estimate of the first `stamp_window` s (those blocks are held
back once, when the device opens) and follows the clock: when even the earliest block of a later
`stamp_window` s is earlier than it by more than `stamp_tolerance`, or later by more than `stamp_max_delay`
(`stamp_tolerance` after an overflow: samples lost, the device stalled or moved, clock drift), the stamps are
resynchronised, which shows as a gap (or overlap) in them, counted.

A device that stops delivering while active (unplugged: the stream ends, or no block for `stall_timeout` s;
`open_timeout` s for the first block after opening) is reported once as an error and closed; the node then
re-opens it (device looked up again by the same name) every `reopen_period` s and says when it is back. With
`reopen_timeout` > 0 it gives up after that long and deactivates (a clean lifecycle state; activate again to
retry). Counters and state on /diagnostics (timar/audio_capture).
"""

from __future__ import annotations

import array
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
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
    Param("latency", 0.0, "s of input buffering asked of PortAudio; 0 = its default ('low'; through PulseAudio "
          "0.2 s either way)", range=(0.0, 2.0)),
    Param("stall_timeout", 2.0, "s without a block from the device (mic) before it counts as lost",
          range=(0.2, 60.0)),
    Param("open_timeout", 5.0, "s to wait for the first block after the device is (re)opened (PulseAudio streams "
          "can take a second or two to start)", range=(0.2, 60.0)),
    Param("reopen_period", 1.0, "s between attempts to re-open a lost device", range=(0.1, 60.0)),
    Param("reopen_timeout", 0.0, "s of failed re-opens before deactivating; 0 = keep trying", range=(0.0, 86400.0)),
    Param("stamp_tolerance", 0.03, "s the sample-counted stamps may run late against the clock (or early, after an "
          "input overflow) before a resync", range=(0.001, 10.0)),
    Param("stamp_max_delay", 0.25, "s the audio server may delay blocks more than at the start before it counts "
          "as lost samples (a resync) without an overflow flag", range=(0.001, 10.0)),
    Param("stamp_window", 1.0, "s of blocks whose earliest clock estimate sets the stamps (held back once when "
          "the device opens) and decides a resync", range=(0.05, 60.0)),
    Param("diagnostics_period", 1.0, "s between /diagnostics messages", range=(0.05, 60.0)),
)


class BlockStamper:
    """Stamps of consecutive blocks from a sample counter and an anchor on the clock (no ROS).

    `push(measured, frames, block)` -> the blocks ready to publish, with their stamps. `measured` is the wall-clock
    estimate of the block's first sample (callback time - block duration), late by however long the audio
    server held the block. The stamp is anchor + samples before the block / rate, so consecutive blocks are
    contiguous. Each block gives an anchor estimate (measured - samples before it / rate); the earliest of the
    last `window` s is the least delayed.
    - Calibration: the blocks of the first `window` s of a stream are held back, then released together,
      stamped from the earliest estimate of the window's second half (a stream can start with a burst of
      blocks; a one-off delay of `window` s when a stream opens).
    - Resync: the earliest estimate of a full window since the last anchor is compared with the anchor. Earlier
      by more than `tolerance`: the stamps were late (the device clock runs fast), the anchor moves back (an
      overlap in the stamps). Later: either samples were lost or the audio server now buffers more (PulseAudio
      raises a stream's latency under load) - the timing alone cannot tell - so the anchor moves forward (a gap)
      only when it is later by more than `max_delay`, or by more than `tolerance` once PortAudio flagged an
      overflow (`overflowed()`). Every move is counted, with its size."""

    def __init__(self, rate: float, window: float = 1.0, tolerance: float = 0.03, max_delay: float = 0.25) -> None:
        self.rate, self.window, self.tolerance, self.max_delay = float(rate), float(window), float(tolerance), \
            float(max_delay)
        self.resyncs = 0
        self.resync_seconds = 0.0  # sum of |step|
        self.reset()

    def reset(self) -> None:
        """A new stream: calibrate a new anchor (a re-opened device)."""
        self.anchor: float | None = None
        self.samples = 0
        self._estimates: deque[tuple[int, float]] = deque()  # (samples at the block, anchor estimate)
        self._held: list[tuple[int, object]] = []  # (samples at the block, block) while calibrating
        self._overflow = False

    def overflowed(self) -> None:
        """PortAudio flagged an input overflow: samples were lost, a later estimate is a gap."""
        self._overflow = True

    def push(self, measured: float, frames: int, block: object) -> list[tuple[float, object]]:
        at = self.samples
        self.samples += int(frames)
        self._estimates.append((at, measured - at / self.rate))
        span = self.window * self.rate
        full = at - self._estimates[0][0] >= span
        while at - self._estimates[0][0] > span:
            self._estimates.popleft()
        earliest = min(e for _, e in self._estimates)
        if self.anchor is None:
            self._held.append((at, block))
            if not full:
                return []
            # the blocks of the window's first half are left out: a stream can start with a burst of them
            settled = [e for a, e in self._estimates if a >= span / 2] or [earliest]
            self.anchor, held, self._held = min(settled), self._held, []
            self._estimates.clear()
            return [(self.anchor + a / self.rate, b) for a, b in held]
        if full:
            step = earliest - self.anchor
            if step < -self.tolerance or step > (self.tolerance if self._overflow else self.max_delay):
                self.resyncs += 1
                self.resync_seconds += abs(step)
                self.anchor = earliest
                self._estimates.clear()
                self._overflow = False
        return [(self.anchor + at / self.rate, block)]


@dataclass
class CaptureCounters:
    chunks: int = 0
    status_flags: int = 0  # blocks PortAudio flagged (input overflow: samples lost)
    device_losses: int = 0  # the device stopped delivering while active
    reopens: int = 0  # re-opened after a loss
    reopen_failures: int = 0


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
        self.counters = CaptureCounters()
        self.stamper: BlockStamper | None = None
        self._last_block = 0.0  # monotonic time of the last block from the device (mic), or of its opening
        self._streaming = False  # a block came since the device was opened
        self._lost_at: float | None = None  # monotonic time the device was lost; None while capturing
        self._next_reopen = 0.0
        self._active = False
        self._watchdog = None
        self.pub_diag = None
        self._diag_timer = None

    @property
    def chunks(self) -> int:
        return self.counters.chunks

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
                self.stamper = None  # made with this configuration's stamp parameters
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
        # diagnostics report every state, inactive too: a plain publisher
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.diagnostics())
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        if p["source"] == "mic":
            self._watchdog = self.create_timer(min(0.2, p["stall_timeout"] / 4), self._watch)
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the publisher before the first chunk
        try:
            self._start_mic() if self.p["source"] == "mic" else self._start_file()
        except Exception as e:  # noqa: BLE001 (PortAudio raises its own types): the device could not be opened
            self.get_logger().error(f"audio_capture: could not open the input: {e}")
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        self._active, self._lost_at = True, None
        return ret

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._close()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._close()
        self._release()
        return super().on_shutdown(state)

    def _release(self) -> None:
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
        for timer in (self._watchdog, self._diag_timer):
            if timer is not None:
                self.destroy_timer(timer)
        if self.pub_diag is not None:
            self.destroy_publisher(self.pub_diag)
        self.pub, self.audio, self._watchdog, self._diag_timer, self.pub_diag = None, None, None, None, None

    def _close(self, abort: bool = False) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                stream.abort() if abort else stream.stop()
                stream.close()
            except Exception as e:  # noqa: BLE001 (PortAudio's own errors): a dead device; nothing left to free
                self.get_logger().warning(f"closing the input: {e}")
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
        self.counters.chunks += 1

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _start_mic(self) -> None:
        import sounddevice as sd

        rate, channels = self.rate, int(self.p["channels"])
        if self.stamper is None:
            self.stamper = BlockStamper(rate, self.p["stamp_window"], self.p["stamp_tolerance"],
                                        self.p["stamp_max_delay"])
        stamper = self.stamper
        stamper.reset()  # a new stream: a new anchor on the clock (the time it was away shows as a gap)

        def callback(indata, frames, time_info, status):  # PortAudio thread
            self._last_block, self._streaming = time.monotonic(), True
            if status:
                self.counters.status_flags += 1
                if status.input_overflow:
                    stamper.overflowed()
                self.get_logger().warning(f"audio input: {status}", throttle_duration_sec=5.0)
            # the block's first sample was captured at least a block duration ago; PortAudio's ADC times are not
            # used: through PulseAudio they swing by half a second while a stream starts (the stamper's earliest
            # estimate takes out the audio server's delays instead)
            for stamp, block in stamper.push(self._now() - frames / rate, frames, indata.copy()):
                self._publish(stamp, block, rate, channels)

        stream = sd.InputStream(device=self._device, samplerate=rate, blocksize=int(self.p["block_size"]),
                                channels=channels, dtype="float32", callback=callback,
                                latency=self.p["latency"] or "low")
        self._last_block, self._streaming = time.monotonic(), False
        stream.start()
        self.stream = stream
        self.get_logger().info(f"capturing from device {self._device_name()} at {rate} Hz, {channels} ch")

    def _device_name(self) -> str:
        return str(self._device) if self._device is not None else "default"

    # ------------------------------------------------------------------ a lost device (mic)
    def _watch(self) -> None:
        """Executor timer: notice a device that stopped delivering; re-open it while it is lost."""
        if not self._active:
            return
        now = time.monotonic()
        if self._lost_at is None:
            stream = self.stream
            if stream is None:
                return
            silent = now - self._last_block
            if not stream.active or silent > self.p["stall_timeout" if self._streaming else "open_timeout"]:
                why = "the stream ended" if not stream.active else (
                    f"no block for {silent:.1f} s" if self._streaming else f"no block {silent:.1f} s after opening")
                self._lose(why, now)
            return
        if now < self._next_reopen:
            return
        if self.p["reopen_timeout"] > 0 and now - self._lost_at > self.p["reopen_timeout"]:
            self.get_logger().error(
                f"audio input: device {self.p['device'] or 'default'!r} still gone after {now - self._lost_at:.0f} s "
                "(reopen_timeout); deactivating (activate again to retry)")
            self.trigger_deactivate()
            return
        self._next_reopen = now + self.p["reopen_period"]
        try:
            self._reopen()
        except Exception as e:  # noqa: BLE001 (PortAudio raises its own types)
            self.counters.reopen_failures += 1
            self.get_logger().warning(f"audio input: re-opening failed ({e}); trying every "
                                   f"{self.p['reopen_period']:g} s", throttle_duration_sec=5.0)
            self._close(abort=True)
            return
        self.counters.reopens += 1
        self.get_logger().info(f"audio input back after {now - self._lost_at:.1f} s")
        self._lost_at = None

    def _lose(self, why: str, now: float) -> None:
        self.counters.device_losses += 1
        self._lost_at, self._next_reopen = now, now + self.p["reopen_period"]
        self.get_logger().error(
            f"audio input lost: device {self._device_name()} ({self.p['device'] or 'system default'}) stopped "
            f"delivering ({why}; unplugged?); user/audio pauses; re-opening every {self.p['reopen_period']:g} s")
        self._close(abort=True)

    def _reopen(self) -> None:
        """Look the device up again (PortAudio re-scanned: it may come back under another index) and open it."""
        import sounddevice as sd

        sd._terminate()  # re-initialise PortAudio so that it scans the devices again (no stream is open here)
        sd._initialize()
        self._device = pick_device(self.p["device"], input_devices(sd))
        self._start_mic()

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(name="timar/audio_capture", hardware_id="timar")
        lost = self._lost_at is not None
        st.level = DiagnosticStatus.ERROR if lost else DiagnosticStatus.OK
        st.message = ("device lost" if lost else "capturing") if self._active else "inactive"
        values = {**asdict(self.counters), "source": self.p["source"], "device": self.p["device"]}
        if self.stamper is not None:
            values.update(stamp_resyncs=self.stamper.resyncs, stamp_resync_s=self.stamper.resync_seconds)
        st.values = [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

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
