"""The robot's own speech on the conversation clock: an utterance queue with a chunk scheduler (`SpeechOut`)
and the speaker's playout buffer (`Playout`). Plain Python + numpy: no ROS and no audio device, so the
`speech_synth` node only converts messages and the timing is unit-tested with a fake clock.

Timeline (s on the conversation clock, the clock of every stamp in the graph; sample n of the timeline sits
at n / sample_rate, so stamps lie on the sample grid and contiguity is exact):
- `say(text)` queues an utterance. A worker thread synthesises the queued ones in order through a
  `TTSBackend`, never on the real-time path.
- An utterance whose synthesis is done at time t starts at max(t, end of the previous utterance), rounded up
  to the sample grid: its own samples are contiguous and it never overlaps the previous one.
- `poll(now)` releases chunks of `chunk_samples` samples (the last of an utterance may be shorter), in stamp
  order, once their stamp (first sample) is <= now + `lookahead`. A released chunk is committed: the agent
  turns agent/audio into lip motion shown at stamp + output_delay, and the speaker plays the sample stamped
  s at s + output_delay, so sound and lips line up.
- `cancel()` (a stop request, an empty text, the user barging in) stops releasing at once: the utterance
  being released ends at the end of its last released chunk (a chunk boundary), queued ones are dropped.
  What was released is still played, so the speaker's output equals agent/audio exactly. The last released
  chunk starts at most `lookahead` after the cancel, so the speaker falls silent at most
  lookahead + chunk duration + output_delay after it (0.3 + 0.1 + 1.25 = 1.65 s with the defaults).

Utterance states: queued (waiting for the synthesiser) -> synthesizing -> playing (scheduled: its chunks are
released ahead of their stamps and the speaker plays it from `start + output_delay`) -> done (its last sample
has left the speaker); or cancelled (from any of the first three; the released part is still played), or
failed (the synthesiser raised). Latency of an utterance = say -> first sample at the speaker
= synthesis time + wait for the previous utterance + output_delay.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from timar_model.motion import SAMPLE_RATE
from timar_model.runtime.turns import OUTPUT_DELAY, to_mono_16k
from timar_model.tts import TTSBackend

CHUNK_SAMPLES = SAMPLE_RATE // 10  # 0.1 s, as audio_capture publishes the microphone
LOOKAHEAD = 0.3  # s; a chunk is released this long before its first sample is due at most
# s; released audio is committed (it cannot be taken back from the agent), so the lookahead bounds how late a
# cancel takes effect; it also stays far below the turn assembler's buffer of future agent audio
# (max_buffered_turns turns of turn_seconds s each).
MAX_LOOKAHEAD = 2.0
STATES = ("queued", "synthesizing", "playing", "done", "cancelled", "failed")  # of an Utterance


@dataclass(frozen=True)
class SpeechOutConfig:
    sample_rate: int = SAMPLE_RATE  # Hz of the published speech
    chunk_samples: int = CHUNK_SAMPLES  # samples per released chunk
    lookahead: float = LOOKAHEAD  # s; a chunk is released once its stamp <= now + lookahead
    output_delay: float = OUTPUT_DELAY  # s; the speaker plays the sample stamped s at s + output_delay
    max_queued: int = 16  # utterances waiting or being synthesised; more are refused
    history: int = 64  # finished utterances kept for status queries

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"SpeechOutConfig: sample_rate must be > 0 Hz, got {self.sample_rate}")
        if self.chunk_samples < 1:
            raise ValueError(f"SpeechOutConfig: chunk_samples must be >= 1, got {self.chunk_samples}")
        if not 0.0 <= self.lookahead <= MAX_LOOKAHEAD:
            raise ValueError(f"SpeechOutConfig: lookahead must be in [0, {MAX_LOOKAHEAD}] s, got {self.lookahead}")
        if self.output_delay < 0:
            raise ValueError(f"SpeechOutConfig: output_delay must be >= 0 s, got {self.output_delay}")
        if self.max_queued < 1 or self.history < 0:
            raise ValueError("SpeechOutConfig: max_queued must be >= 1 and history >= 0")

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / self.sample_rate

    @property
    def cancel_reaction(self) -> float:
        """s; the longest a cancel can take to silence the speaker: the last released chunk starts at most
        `lookahead` after it, and is played in full output_delay after its stamp."""
        return self.lookahead + self.chunk_seconds + self.output_delay


@dataclass
class Utterance:
    """One utterance's status (the queries return copies). Times are s on the conversation clock."""

    id: int
    text: str
    requested: float  # say() was called
    sample_rate: int
    output_delay: float
    state: str = "queued"  # one of STATES
    synthesis_started: float | None = None
    synthesized: float | None = None  # synthesis done
    start_sample: int | None = None  # timeline index of the first sample (scheduled when synthesised)
    samples: int = 0  # samples to play: the synthesised length, cut to `released` by a cancel
    released: int = 0  # samples released so far
    finished: float | None = None  # done / cancelled / failed at
    reason: str = ""  # why it was cancelled or failed

    @property
    def synthesis_seconds(self) -> float | None:
        if self.synthesis_started is None or self.synthesized is None:
            return None
        return self.synthesized - self.synthesis_started

    @property
    def start(self) -> float | None:
        """Stamp of the first sample."""
        return None if self.start_sample is None else self.start_sample / self.sample_rate

    @property
    def end(self) -> float | None:
        """Stamp one past the last sample to be played."""
        return None if self.start_sample is None else (self.start_sample + self.samples) / self.sample_rate

    @property
    def latency(self) -> float | None:
        """s from say() to the first sample at the speaker; None if no sample is ever played."""
        if self.start_sample is None or self.samples == 0:
            return None
        return self.start + self.output_delay - self.requested

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate


@dataclass(frozen=True)
class SpeechChunk:
    """A released piece of an utterance, to be published on agent/audio and played."""

    utterance: int
    index: int  # chunk index within the utterance
    first_sample: int  # timeline index of samples[0]
    sample_rate: int
    samples: np.ndarray  # (n,) float32 mono, n <= chunk_samples
    last: bool  # the utterance's last chunk (False for the last one released before a cancel)

    @property
    def stamp(self) -> float:
        """s; time of the first sample on the conversation clock."""
        return self.first_sample / self.sample_rate

    @property
    def stamp_ns(self) -> int:
        """The stamp in integer ns, exact on the sample grid (a float stamp of today's date has a resolution of
        about 0.2 us)."""
        return self.first_sample * 1_000_000_000 // self.sample_rate

    @property
    def end_sample(self) -> int:
        return self.first_sample + self.samples.size


@dataclass
class SpeechCounters:
    said: int = 0  # utterances accepted
    refused: int = 0  # utterances refused (queue full)
    synthesized: int = 0
    done: int = 0
    cancelled: int = 0
    failed: int = 0
    chunks: int = 0  # chunks released
    samples_released: int = 0
    samples_cancelled: int = 0  # synthesised samples never released because of a cancel
    late_chunks: int = 0  # released after stamp + output_delay: the speaker cannot play them in time


class QueueFull(RuntimeError):
    """say() while `max_queued` utterances wait or are being synthesised."""


class SpeechOut:
    """The utterance queue and chunk scheduler. Thread-safe: say / cancel from callbacks, poll from a timer,
    synthesis on its own worker thread (`start` / `stop`), or step by step with `synthesize_next` (tests)."""

    def __init__(
        self, tts: TTSBackend, config: SpeechOutConfig | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.config = config or SpeechOutConfig()
        self.clock = clock or time.monotonic
        self.counters = SpeechCounters()
        self._tts = tts
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_id = 0
        self._pending: deque[Utterance] = deque()  # queued / synthesizing, in order
        self._playing: deque[Utterance] = deque()  # scheduled, not yet done, in stamp order
        self._history: deque[Utterance] = deque(maxlen=self.config.history)
        self._backend: dict[int, TTSBackend] = {}  # utterance -> the backend current at say()
        self._audio: dict[int, np.ndarray] = {}  # utterance -> (samples,) float32 while being released
        self._timeline_end: int | None = None  # one past the last sample committed to the timeline
        self._released_end: int | None = None  # one past the last sample released
        self._audible: deque[list[int]] = deque()  # [first, end) sample ranges released (merged when contiguous)
        self._changes: list[Utterance] = []
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ requests
    def set_tts(self, tts: TTSBackend) -> None:
        """The backend for utterances said from now on (a new voice); queued ones keep theirs."""
        with self._lock:
            self._tts = tts

    def say(self, text: str, now: float | None = None) -> int | None:
        """Queue `text`; an empty (or blank) text cancels instead. -> the utterance id, None for a cancel.
        Raises QueueFull when `max_queued` utterances already wait."""
        if not text.strip():
            self.cancel(now, reason="empty text")
            return None
        with self._lock:
            now = self.clock() if now is None else now
            if len(self._pending) >= self.config.max_queued:
                self.counters.refused += 1
                raise QueueFull(f"{len(self._pending)} utterances already wait (max_queued); not queued: {text!r}")
            u = Utterance(self._next_id, text, now, self.config.sample_rate, self.config.output_delay)
            self._next_id += 1
            self._backend[u.id] = self._tts
            self._pending.append(u)
            self.counters.said += 1
            self._changed(u)
            self._wake.notify_all()
            return u.id

    def cancel(self, now: float | None = None, reason: str = "stop request") -> list[int]:
        """Stop releasing: the utterance being released ends at its last released chunk, queued ones are
        dropped (their synthesis result, if one is running, is discarded). -> ids of the cancelled ones."""
        with self._lock:
            now = self.clock() if now is None else now
            ids = []
            for u in list(self._playing):
                if u.released == u.samples:
                    continue  # entirely released: it plays to its end and becomes done
                self.counters.samples_cancelled += u.samples - u.released
                u.samples = u.released
                self._audio.pop(u.id, None)
                self._finish(u, "cancelled", now, reason)
                ids.append(u.id)
            for u in list(self._pending):
                self._finish(u, "cancelled", now, reason)
                ids.append(u.id)
            self._pending.clear()
            self._playing = deque(u for u in self._playing if u.state == "playing")  # the fully released ones
            self._timeline_end = self._released_end  # the next utterance follows what was released
            return ids

    # ------------------------------------------------------------------ synthesis
    def synthesize_next(self, timeout: float = 0.0) -> bool:
        """Synthesise the oldest queued utterance (waiting up to `timeout` s for one) and schedule it.
        -> False if there was none. The worker thread calls this in a loop."""
        with self._lock:
            if not any(u.state == "queued" for u in self._pending) and timeout > 0:
                self._wake.wait(timeout)
            u = next((u for u in self._pending if u.state == "queued"), None)
            if u is None:
                return False
            u.state, u.synthesis_started = "synthesizing", self.clock()
            tts = self._backend.pop(u.id)
            self._changed(u)
        try:
            speech = tts.synthesize(u.text)
            audio = np.asarray(speech.samples, np.float32).reshape(-1)
            if not np.all(np.isfinite(audio)):
                raise ValueError("the synthesiser returned NaN or infinite samples")
            if speech.sample_rate != self.config.sample_rate:
                audio = to_mono_16k(audio, speech.sample_rate, 1, self.config.sample_rate)
            audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
            error = None
        except Exception as e:  # noqa: BLE001 (any backend): the utterance fails, the queue goes on
            audio, error = None, f"{type(e).__name__}: {e}"
        with self._lock:
            now = self.clock()
            u.synthesized = now
            if u.state != "synthesizing":  # cancelled meanwhile
                return True
            self._pending.remove(u)
            if error is not None:
                self._finish(u, "failed", now, error)
                return True
            self.counters.synthesized += 1
            first = math.ceil(now * self.config.sample_rate - 1e-6)
            if self._timeline_end is not None:
                first = max(first, self._timeline_end)
            u.start_sample, u.samples, u.state = first, audio.size, "playing"
            if audio.size == 0:
                self._finish(u, "done", now, "nothing to say")
                return True
            self._audio[u.id] = audio
            self._timeline_end = first + audio.size
            self._playing.append(u)
            self._changed(u)
        return True

    def start(self) -> None:
        """Start the synthesis worker thread (no-op if running)."""
        if self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._worker, args=(self._stop,), name="speech-synth", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the worker (a synthesis in progress finishes first). -> False if it outlived the timeout."""
        if self._thread is None:
            return True
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        return not alive

    def _worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.synthesize_next(timeout=0.1)

    # ------------------------------------------------------------------ release
    def poll(self, now: float | None = None) -> list[SpeechChunk]:
        """Release every chunk whose stamp <= now + lookahead (stamp order); mark utterances whose last sample
        has left the speaker (end + output_delay <= now) done."""
        cfg = self.config
        out: list[SpeechChunk] = []
        with self._lock:
            now = self.clock() if now is None else now
            horizon = now + cfg.lookahead
            for u in self._playing:
                audio = self._audio.get(u.id)
                while audio is not None and u.released < u.samples:
                    first = u.start_sample + u.released
                    if first / cfg.sample_rate > horizon:
                        break
                    n = min(cfg.chunk_samples, u.samples - u.released)
                    chunk = SpeechChunk(u.id, u.released // cfg.chunk_samples, first, cfg.sample_rate,
                                        audio[u.released:u.released + n].copy(), u.released + n == u.samples)
                    u.released += n
                    out.append(chunk)
                    self._note_release(chunk, now)
                if u.released < u.samples:
                    break  # later utterances start after this one
                self._audio.pop(u.id, None)
            while self._playing and self._playing[0].released == self._playing[0].samples \
                    and self._playing[0].end + cfg.output_delay <= now:
                self._finish(self._playing.popleft(), "done", now)
            while self._audible and self._audible[0][1] / cfg.sample_rate + cfg.output_delay <= now:
                self._audible.popleft()
        return out

    def _note_release(self, chunk: SpeechChunk, now: float) -> None:
        self._released_end = chunk.end_sample
        self.counters.chunks += 1
        self.counters.samples_released += chunk.samples.size
        if now > chunk.stamp + self.config.output_delay:
            self.counters.late_chunks += 1
        if self._audible and self._audible[-1][1] == chunk.first_sample:
            self._audible[-1][1] = chunk.end_sample
        else:
            self._audible.append([chunk.first_sample, chunk.end_sample])

    def speaking(self, now: float | None = None) -> bool:
        """True while released speech is at the speaker: stamp + output_delay <= now < end + output_delay for
        some released range (contiguous utterances make one range)."""
        cfg = self.config
        with self._lock:
            now = self.clock() if now is None else now
            return any(a / cfg.sample_rate + cfg.output_delay <= now < b / cfg.sample_rate + cfg.output_delay
                       for a, b in self._audible)

    # ------------------------------------------------------------------ status
    def _changed(self, u: Utterance) -> None:
        self._changes.append(replace(u))

    def _finish(self, u: Utterance, state: str, now: float, reason: str = "") -> None:
        u.state, u.finished, u.reason = state, now, reason
        setattr(self.counters, state, getattr(self.counters, state) + 1)
        self._backend.pop(u.id, None)
        self._history.append(u)
        self._changed(u)

    def pop_changes(self) -> list[Utterance]:
        """Status snapshots since the last call, one per state change, in order."""
        with self._lock:
            changes, self._changes = self._changes, []
            return changes

    def utterances(self) -> list[Utterance]:
        """Snapshots of the recent finished utterances, then the playing and the queued ones (id order)."""
        with self._lock:
            live = {u.id: u for u in (*self._history, *self._playing, *self._pending)}
            return [replace(live[k]) for k in sorted(live)]

    def status(self, uid: int) -> Utterance | None:
        return next((u for u in self.utterances() if u.id == uid), None)

    @property
    def released_until(self) -> float | None:
        """Stamp one past the last released sample (s): the speaker is silent from this + output_delay on,
        unless more is released."""
        with self._lock:
            return None if self._released_end is None else self._released_end / self.config.sample_rate

    @property
    def busy(self) -> bool:
        """An utterance is queued, being synthesised or not yet done."""
        with self._lock:
            return bool(self._pending or self._playing)

    def counters_dict(self) -> dict[str, int]:
        with self._lock:
            d = asdict(self.counters)
            d["pending"] = len(self._pending)  # queued or being synthesised
            d["playing"] = len(self._playing)
            return d


# -------------------------------------------------------------------- the speaker
@dataclass
class ClockOffset:
    """The offset of the conversation clock over an audio device's clock, from noisy readings.

    The audio callback reads the conversation clock after PortAudio read its own (the callback may wait for
    the GIL), so each reading of conversation - device time is the true offset plus a delay >= 0. The lowest
    readings are the best: the estimate drops to any lower reading at once and rises by at most `rise` s per s
    of device time (the two clocks' drift, well above a sound card's 100 ppm); a reading above it by more than
    `jump` s (the conversation clock was stepped) is taken as it is."""

    rise: float = 500e-6  # s per s
    jump: float = 0.1  # s
    offset: float | None = field(default=None, init=False)  # s; the estimate
    _at: float | None = field(default=None, init=False, repr=False)  # device time of the last reading

    def update(self, reading: float, device_time: float) -> float:
        """reading: conversation time - device time (s), read at device_time (s, device clock). -> the offset."""
        if self.offset is None or reading < self.offset or reading - self.offset > self.jump:
            self.offset = reading
        else:
            self.offset = min(reading, self.offset + self.rise * max(0.0, device_time - self._at))
        self._at = device_time
        return self.offset


@dataclass
class PlayoutCounters:
    played_samples: int = 0  # scheduled samples written to the device
    late_samples: int = 0  # arrived after their time at the speaker had passed (never played)
    overflow_samples: int = 0  # dropped because the buffer held more than max_seconds
    resyncs: int = 0  # the play position jumped to the clock (start, or drift beyond resync s)
    slips: int = 0  # one-sample corrections of slow drift between the device and the conversation clock


@dataclass
class Playout:
    """The speaker's buffer: released chunks in (`add`), the samples due at the DAC out (`read`, called by the
    audio callback). The sample stamped s is played at s + output_delay; silence where nothing is scheduled.

    The play position runs free with the device (so blocks join without clicks) and follows the conversation
    clock through the difference between where it is and where the DAC time says it should be, smoothed over
    about 1 / `smoothing` blocks (host APIs report DAC times with a jitter of several ms): a smoothed
    difference above `slip` s moves it by one input sample, one above `resync` s makes it jump to where the
    block's DAC time says (a device underflow, a clock step). An output rate other than `sample_rate` is
    served by linear interpolation."""

    output_delay: float = OUTPUT_DELAY  # s
    sample_rate: int = SAMPLE_RATE  # Hz of the added samples
    output_rate: int = SAMPLE_RATE  # Hz of the device
    max_seconds: float = 30.0  # s of audio held at most
    resync: float = 0.02  # s
    slip: float = 0.002  # s
    smoothing: float = 0.01  # weight of a block's difference in the smoothed one
    counters: PlayoutCounters = field(default_factory=PlayoutCounters)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.output_rate <= 0:
            raise ValueError("Playout: sample_rate and output_rate must be > 0 Hz")
        if not 0 < self.slip < self.resync:
            raise ValueError(f"Playout: need 0 < slip < resync, got {self.slip} and {self.resync}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"Playout: smoothing must be in (0, 1], got {self.smoothing}")
        self._lock = threading.Lock()
        self._starts: list[int] = []  # first sample of each held chunk, sorted
        self._chunks: list[np.ndarray] = []
        self._cursor: float | None = None  # input-sample position of the next output sample
        self._error = 0.0  # input samples; smoothed (where the clock says the cursor should be) - cursor

    def add(self, first_sample: int, samples: np.ndarray) -> None:
        """Hold samples (n,) whose first one sits at timeline index first_sample (stamp * sample_rate)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        with self._lock:
            if self._cursor is not None and first_sample < self._cursor:
                late = min(first_sample + x.size, math.ceil(self._cursor)) - first_sample
                self.counters.late_samples += late
                x, first_sample = x[late:], first_sample + late
            if x.size == 0:
                return
            i = bisect.bisect(self._starts, first_sample)
            self._starts.insert(i, first_sample)
            self._chunks.insert(i, x)
            limit = int(self.max_seconds * self.sample_rate)
            while sum(c.size for c in self._chunks) > limit:
                self.counters.overflow_samples += self._chunks[0].size
                self._starts.pop(0)
                self._chunks.pop(0)

    def read(self, frames: int, dac_time: float) -> np.ndarray:
        """(frames,) float32 at output_rate: what the device plays from `dac_time` on (s, conversation clock,
        when this block's first sample leaves the DAC)."""
        step = self.sample_rate / self.output_rate
        with self._lock:
            target = (dac_time - self.output_delay) * self.sample_rate
            if self._cursor is None:
                self._cursor = float(round(target)) if step == 1.0 else target
                self._error = 0.0
                self.counters.resyncs += 1
            else:
                err = target - self._cursor
                self._error += self.smoothing * (err - self._error)
                if abs(self._error) > self.resync * self.sample_rate:  # jump to where this block should be
                    self._cursor += float(round(err)) if step == 1.0 else err
                    self._error = 0.0
                    self.counters.resyncs += 1
                elif abs(self._error) > self.slip * self.sample_rate:
                    self._cursor += math.copysign(1.0, self._error)
                    self._error -= math.copysign(1.0, self._error)
                    self.counters.slips += 1
            base = math.floor(self._cursor)
            if step == 1.0 and self._cursor == base:
                out = self._gather(base, base + frames)
            else:
                pos = (self._cursor - base) + np.arange(frames) * step
                seg = self._gather(base, base + int(pos[-1]) + 2)
                out = np.interp(pos, np.arange(seg.size), seg).astype(np.float32)
            self._cursor += frames * step
            self.counters.played_samples += self._held_in(base, math.floor(self._cursor))
            self._drop_before(math.floor(self._cursor))
            return out

    def _gather(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) of the timeline, zeros where nothing is held."""
        out = np.zeros(b - a, np.float32)
        for s, c in zip(self._starts, self._chunks):
            if s >= b:
                break
            lo, hi = max(a, s), min(b, s + c.size)
            if lo < hi:
                out[lo - a:hi - a] = c[lo - s:hi - s]
        return out

    def _held_in(self, a: int, b: int) -> int:
        """How many samples of [a, b) are held."""
        return sum(max(0, min(b, s + c.size) - max(a, s)) for s, c in zip(self._starts, self._chunks))

    def _drop_before(self, n: int) -> None:
        while self._starts and self._starts[0] + self._chunks[0].size <= n:
            self._starts.pop(0)
            self._chunks.pop(0)

    def reset(self) -> None:
        """Forget everything held and the play position (the stream was closed)."""
        with self._lock:
            self._starts.clear()
            self._chunks.clear()
            self._cursor = None
            self._error = 0.0

    @property
    def held_samples(self) -> int:
        with self._lock:
            return sum(c.size for c in self._chunks)
