"""Voice activity detection on a stream of stamped audio chunks: speech start and end events with stamps.

Plain Python + numpy (+ torch for silero; no ROS). Chunks come at any sample rate, channel count and size; they
are downmixed and resampled to 16 kHz by a streaming polyphase resampler (the same filter as
`scipy.signal.resample_poly`, which `turns.to_mono_16k` uses per chunk, but continuous across chunk
boundaries), cut into 512-sample windows (32 ms), and each window is classified as voiced or not by a
backend:
  - `silero`: the silero-vad network shipped inside the `silero-vad` wheel (no download), on the CPU, with
    its recurrent state carried from window to window; voiced = speech probability >= `threshold` outside
    speech, >= `hold_threshold` inside (hysteresis);
  - `energy`: the window's RMS level in dBFS against a noise floor that follows the quietest windows
    (falls at once, rises by `energy_floor_rise` dB/s); voiced = level >= max(`energy_threshold_db`,
    floor + `energy_snr_db`) outside speech, `energy_hold_db` less inside;
  - `auto`: silero when the package is installed, else energy.

Events (hysteresis over windows):
  - start: once the voiced windows of a candidate stretch add up to `min_speech` s; stamped at the start of
    its first voiced window;
  - end: once `min_silence` s have passed since the last voiced window; stamped at that window's end.
  A candidate that has not reached `min_speech` is dropped after `min_silence` s without voice.
Stamps are on the chunks' clock: a chunk's stamp is the time of its first sample, and later samples follow
at the nominal rate. A chunk whose stamp is more than `max_gap` s away from where the previous one ended
(a dropped chunk, a clock jump, a new rate or channel count) restarts the stream there: an ongoing speech
stretch ends at the previous audio's end and the backend state is reset.
Splitting the same audio into different chunk sizes gives the same events (windows and resampling depend
only on the sample positions).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import resample_poly

from timar_model.motion import SAMPLE_RATE

WINDOW = 512  # samples at 16 kHz per classified window (silero-vad's window at this rate)
BACKENDS = ("auto", "silero", "energy")


class VadInputError(ValueError):
    """A malformed audio chunk (the detector's state is unchanged)."""


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" | "end"
    stamp: float  # s on the chunks' clock: first voiced sample (start) / one past the last voiced sample (end)
    detected_at: float  # s on the same clock: end of the audio that decided it (stamp + min_speech or more)


@dataclass
class VadConfig:
    backend: str = "auto"  # auto | silero | energy
    threshold: float = 0.5  # silero speech probability that starts speech
    hold_threshold: float = 0.35  # silero speech probability that keeps speech going
    energy_threshold_db: float = -40.0  # dBFS; lowest level that can start speech (energy backend)
    energy_snr_db: float = 10.0  # dB above the noise floor to start speech (energy backend)
    energy_hold_db: float = 6.0  # dB below the start level that keeps speech going (energy backend)
    energy_floor_rise: float = 2.0  # dB/s; how fast the noise floor follows a louder background
    min_speech: float = 0.25  # s of voiced windows before a start is reported
    min_silence: float = 0.3  # s without voice before an end is reported
    max_gap: float = 0.1  # s; a chunk stamp further than this from the previous chunk's end restarts the stream
    torch_threads: int = 1  # torch CPU threads of this process for silero; 0 = as importing silero-vad left them (1)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"VadConfig: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0.0 < self.hold_threshold <= self.threshold < 1.0:
            raise ValueError("VadConfig: need 0 < hold_threshold <= threshold < 1, "
                             f"got {self.hold_threshold} and {self.threshold}")
        if self.energy_snr_db < 0 or self.energy_hold_db < 0 or self.energy_floor_rise < 0:
            raise ValueError("VadConfig: energy_snr_db, energy_hold_db and energy_floor_rise must be >= 0")
        if self.min_speech < 0 or self.min_silence < 0:
            raise ValueError(f"VadConfig: min_speech and min_silence must be >= 0 s, "
                             f"got {self.min_speech} and {self.min_silence}")
        if self.max_gap <= 0:
            raise ValueError(f"VadConfig: max_gap must be > 0 s, got {self.max_gap}")
        if self.torch_threads < 0:
            raise ValueError(f"VadConfig: torch_threads must be >= 0, got {self.torch_threads}")


def silero_available() -> bool:
    """True when the silero-vad package is installed (checked without importing it: importing it sets the
    process's torch threads to 1)."""
    return importlib.util.find_spec("silero_vad") is not None


class _SileroBackend:
    name = "silero"

    def __init__(self, config: VadConfig) -> None:
        try:
            import torch
            from silero_vad import load_silero_vad
        except ImportError as e:
            raise RuntimeError("VAD backend 'silero' needs the silero-vad package: pip install silero-vad "
                               "(or use backend 'energy')") from e
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self._torch = torch
        with warnings.catch_warnings():  # torch.jit.load and importlib.resources deprecation notices
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = load_silero_vad()
        self._on, self._hold = config.threshold, config.hold_threshold
        self.score = 0.0  # the last window's speech probability

    def reset(self) -> None:
        self._model.reset_states()

    def voiced(self, window: np.ndarray, holding: bool) -> bool:
        with self._torch.inference_mode():
            self.score = float(self._model(self._torch.from_numpy(window), SAMPLE_RATE).item())
        return self.score >= (self._hold if holding else self._on)


class _EnergyBackend:
    name = "energy"

    def __init__(self, config: VadConfig) -> None:
        self._lowest_floor = config.energy_threshold_db - config.energy_snr_db
        self._snr, self._hold_db = config.energy_snr_db, config.energy_hold_db
        self._rise = config.energy_floor_rise * WINDOW / SAMPLE_RATE  # dB per window
        self.reset()

    def reset(self) -> None:
        self.floor = self._lowest_floor  # dBFS
        self.score = -math.inf  # the last window's level, dBFS

    def voiced(self, window: np.ndarray, holding: bool) -> bool:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        self.score = 20.0 * math.log10(max(rms, 1e-10))
        self.floor = max(self._lowest_floor, min(self.floor + self._rise, self.score))
        start_level = self.floor + self._snr
        return self.score >= (start_level - self._hold_db if holding else start_level)


class _StreamResampler:
    """Polyphase resampling of a stream to 16 kHz, identical to `resample_poly` over the whole stream:
    each block is resampled with enough past and future input around it, so the output does not depend on
    where the chunks were cut. Output lags the input by the filter's half length (under 2 ms)."""

    def __init__(self, rate_in: int) -> None:
        g = math.gcd(rate_in, SAMPLE_RATE)
        self.up, self.down = SAMPLE_RATE // g, rate_in // g
        # resample_poly's default filter spans 10 * max(up, down) upsampled samples on each side
        self.margin = math.ceil(10 * max(self.up, self.down) / self.up) + 1  # input samples
        self._buf = np.zeros(0, np.float64)
        self._buf_start = 0  # input index of _buf[0]
        self._next_out = 0  # output index of the next sample to emit

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        in_end = self._buf_start + self._buf.size
        if in_end < self.margin:
            return np.zeros(0, np.float32)
        out_end = (in_end - self.margin) * self.up // self.down + 1  # outputs whose support has arrived
        if out_end <= self._next_out:
            return np.zeros(0, np.float32)
        seg = self._segment_start(self._next_out)
        y = resample_poly(self._buf[seg - self._buf_start:], self.up, self.down)
        first = seg * self.up // self.down
        out = y[self._next_out - first: out_end - first].astype(np.float32)
        self._next_out = out_end
        keep = self._segment_start(self._next_out)
        self._buf = self._buf[keep - self._buf_start:]
        self._buf_start = keep
        return out

    def _segment_start(self, out_index: int) -> int:
        """A phase-aligned input index (a multiple of `down`) at least `margin` before output out_index."""
        earliest = out_index * self.down / self.up - self.margin
        return max(0, math.floor(earliest / self.down) * self.down)


@dataclass
class _Stream:
    origin: float  # s; stamp of the stream's first sample
    sample_rate: int
    channels: int
    samples_in: int = 0  # input frames (per channel) received
    resampler: _StreamResampler | None = None
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 16 kHz, < one window
    windows: int = 0  # windows classified

    @property
    def expected_stamp(self) -> float:
        return self.origin + self.samples_in / self.sample_rate


class VoiceActivity:
    """Feed stamped chunks with `feed`; it returns the speech start/end events they complete, in order.
    `speaking` is True between a start and its end. Not thread-safe (one stream per instance)."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        backend = self.config.backend
        if backend == "auto":
            backend = "silero" if silero_available() else "energy"
        self._backend = _SileroBackend(self.config) if backend == "silero" else _EnergyBackend(self.config)
        self._stream: _Stream | None = None
        self._speaking = False
        self._candidate_start: float | None = None  # s; first voiced window of the current stretch
        self._voiced_time = 0.0  # s of voiced windows in the current stretch
        self._last_voiced_end: float | None = None  # s; end of the stretch's latest voiced window

    @property
    def backend(self) -> str:
        """The backend in use: silero | energy."""
        return self._backend.name

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def score(self) -> float:
        """The last window's score: speech probability (silero) or level in dBFS (energy)."""
        return self._backend.score

    @property
    def time(self) -> float | None:
        """s on the chunks' clock: the end of the audio classified so far (None before any)."""
        s = self._stream
        return None if s is None else s.origin + s.windows * WINDOW / SAMPLE_RATE

    def feed(self, samples: np.ndarray, stamp: float, sample_rate: int = SAMPLE_RATE,
             channels: int = 1) -> list[VadEvent]:
        """samples: interleaved float (N * channels,) in [-1, 1] (or (N, channels)); stamp: s, time of the
        first sample; sample_rate: Hz. Raises VadInputError on a malformed chunk."""
        x = self._validate(samples, stamp, sample_rate, channels)
        events: list[VadEvent] = []
        s = self._stream
        if (s is None or s.sample_rate != sample_rate or s.channels != channels
                or abs(stamp - s.expected_stamp) > self.config.max_gap):
            events += self.finish()
            s = self._stream = self._new_stream(float(stamp), int(sample_rate), int(channels))
        s.samples_in += x.size
        y = x if s.resampler is None else s.resampler.push(x)
        s.pending = np.concatenate([s.pending, y])
        n_windows = s.pending.size // WINDOW
        for w in range(n_windows):
            t0 = s.origin + s.windows * WINDOW / SAMPLE_RATE
            window = s.pending[w * WINDOW:(w + 1) * WINDOW]
            holding = self._candidate_start is not None
            events += self._step(self._backend.voiced(window, holding), t0, t0 + WINDOW / SAMPLE_RATE)
            s.windows += 1
        s.pending = s.pending[n_windows * WINDOW:]
        return events

    def finish(self) -> list[VadEvent]:
        """End of the stream (or a restart): an ongoing speech stretch ends at its last voiced window. The
        next chunk starts a new stream with a fresh backend state."""
        events = []
        now = self.time
        if self._speaking and self._last_voiced_end is not None and now is not None:
            events.append(VadEvent("end", self._last_voiced_end, now))
        self._speaking = False
        self._candidate_start = self._last_voiced_end = None
        self._voiced_time = 0.0
        self._stream = None
        return events

    def reset(self) -> None:
        """Forget everything (no events)."""
        self.finish()

    # ------------------------------------------------------------------ internals
    def _new_stream(self, stamp: float, sample_rate: int, channels: int) -> _Stream:
        self._backend.reset()
        resampler = None if sample_rate == SAMPLE_RATE else _StreamResampler(sample_rate)
        return _Stream(origin=stamp, sample_rate=sample_rate, channels=channels, resampler=resampler)

    @staticmethod
    def _validate(samples: np.ndarray, stamp: float, sample_rate: int, channels: int) -> np.ndarray:
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise VadInputError(f"VAD: channels must be an integer >= 1, got {channels!r}")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise VadInputError(f"VAD: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        if not isinstance(stamp, (int, float, np.integer, np.floating)) or not math.isfinite(stamp):
            raise VadInputError(f"VAD: stamp must be a finite time in s, got {stamp!r}")
        x = np.asarray(samples)
        if x.dtype.kind not in "fiu":
            raise VadInputError(f"VAD: samples must be numbers, got dtype {x.dtype}")
        if x.ndim == 2 and x.shape[1] == channels:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise VadInputError(f"VAD: samples must be 1-d interleaved (or (N, {channels})), got shape {x.shape}")
        if x.size % channels:
            raise VadInputError(f"VAD: {x.size} samples is not a multiple of channels={channels}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise VadInputError("VAD: chunk contains NaN or infinite samples")
        return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x

    def _step(self, voiced: bool, t0: float, t1: float) -> list[VadEvent]:
        cfg = self.config
        if voiced:
            if self._candidate_start is None:
                self._candidate_start, self._voiced_time = t0, 0.0
            self._voiced_time += t1 - t0
            self._last_voiced_end = t1
            if not self._speaking and self._voiced_time >= cfg.min_speech - 1e-9:
                self._speaking = True
                return [VadEvent("start", self._candidate_start, t1)]
            return []
        if self._candidate_start is None or self._last_voiced_end is None:
            return []
        if t1 - self._last_voiced_end < cfg.min_silence - 1e-9:
            return []
        events = [VadEvent("end", self._last_voiced_end, t1)] if self._speaking else []
        self._speaking = False
        self._candidate_start = self._last_voiced_end = None
        self._voiced_time = 0.0
        return events
