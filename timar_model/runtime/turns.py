"""Live turn assembly: stamped audio chunks and motion frames in, complete 1 s turns out.

Plain Python + numpy (no ROS), so the ROS agent node only converts messages and calls this.

Timeline: t0 = the first stamp of a user stream (or `set_origin`). Turn k covers [t0 + k, t0 + k + 1) s.
Audio sample n of the timeline sits at t0 + n / 16000, motion frame f at t0 + f / 25.
A turn is emitted (in order, each exactly once) when
  - both audio streams and the user motion cover its end (streams declared absent are not waited for), or
  - `poll(now)` is called with now >= turn end + deadline (missing audio -> silence, missing motion -> the
    last frame is held; both counted).
Lost partner motion (no tracker data): the last frame is held for `motion_hold` s, then eased linearly to the
neutral frame (zeros) over `motion_ease` s, and stays neutral until frames come again (counted in
`held_motion_frames` and `eased_motion_frames`; a robot does not stare at a pose the partner left long ago).
Data for an already emitted turn is dropped and counted ("late").
Stamps: a user message stamped more than `max_jump_back` s before its stream's previous one (or, for a stream's
first message on a timeline, before the other user stream's), or more than `max_jump_forward` s after the newest
user stamp, does not fit the timeline. It is held as a jump candidate; `jump_confirm` candidates that fit each
other confirm a clock jump (a bag replayed again, sim time restarted): the timeline is reset (the `epoch` of later
turns increases; the model's context should be reset with it) and the candidates are replayed into the new one.
A candidate followed by a message of its own stream that fits the current timeline was an outlier (a single
far-future or far-past stamp): dropped and counted (`outlier_stamps`), the timeline goes on untouched. After a
jump, messages stamped near where the old timeline ended (within max_jump_back) and not near the new one are
still in flight from before it: dropped and counted the same way (not taken for a jump back).
Audio is sanitised first (`sanitize_audio`): NaN/Inf samples -> 0, samples beyond [-1, 1] clipped, channels
downmixed, any rate in AUDIO_RATE_RANGE resampled; a chunk that cannot be used (empty, no finite sample, length
not a multiple of the channels, bad channel count or rate, longer than the buffered window) is dropped. Each
kind is counted per stream (`audio_faults`) and reported through `on_note(kind, text)`.
Memory is bounded: buffers exist only for turns in [next turn, next turn + max_buffered_turns).

`MotionPlayer` turns a generated turn into display-stamped frames: frame i of a turn that starts at
`start` is shown at start + i / 25 + output_delay and released for publishing at that stamp - publish_lead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE, ease_weights, hold_then_ease  # noqa: F401 (re-exported)

# s from a turn's start to its first frame's display: the turn's 1 s, then the time to have its data and
# generate it, and a margin so that a controller receives its trajectory before the first point is due
# (README: Real-time behaviour).
OUTPUT_DELAY = 1.25


@dataclass
class AssemblerConfig:
    sample_rate: int = SAMPLE_RATE  # samples per second of the emitted speech
    fps: int = FPS  # motion frames per second
    turn_seconds: int = 1  # one turn = 1 s
    deadline: float = 0.08  # s after a turn's end when it is emitted even if incomplete
    expect_agent_audio: bool = False  # wait for agent audio to cover a turn (else absent = silence)
    expect_user_motion: bool = True  # wait for user motion to cover a turn (else hold last frame)
    jitter_tolerance: float = 0.005  # s; an audio chunk starting this close to the previous end is contiguous
    max_jump_back: float = 1.0  # s; larger backward stamp jumps reset the timeline
    max_jump_forward: float = 10.0  # s; larger forward stamp jumps reset the timeline
    jump_confirm: int = 2  # messages that fit each other (and not the timeline) confirm a clock jump
    max_buffered_turns: int = 16  # data further ahead than this many turns is dropped (memory bound)
    idle_timeout: float = 3.0  # s; no deadline emission for turns ending this long after the last user data
    motion_hold: float = 1.0  # s; missing partner motion holds the last frame this long ...
    motion_ease: float = 1.0  # s; ... then eases to the neutral frame over this long

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.fps <= 0 or self.turn_seconds <= 0:
            raise ValueError("AssemblerConfig: sample_rate, fps and turn_seconds must be positive")
        if self.deadline < 0 or self.jitter_tolerance < 0:
            raise ValueError("AssemblerConfig: deadline and jitter_tolerance must be >= 0")
        if self.motion_hold < 0 or self.motion_ease <= 0:
            raise ValueError("AssemblerConfig: motion_hold must be >= 0 and motion_ease > 0")
        if self.max_buffered_turns < 1:
            raise ValueError("AssemblerConfig: max_buffered_turns must be >= 1")
        if self.jump_confirm < 1 or self.max_jump_back < 0 or self.max_jump_forward < 0:
            raise ValueError("AssemblerConfig: jump_confirm must be >= 1, max_jump_back/forward >= 0")

    @property
    def samples_per_turn(self) -> int:
        return self.sample_rate * self.turn_seconds

    @property
    def frames_per_turn(self) -> int:
        return self.fps * self.turn_seconds


@dataclass
class AssemblerCounters:
    """Running totals since construction (a timeline reset does not clear them)."""

    audio_chunks: int = 0
    motion_frames: int = 0
    gaps: int = 0  # audio chunks starting after the previous end (beyond the jitter tolerance)
    gap_seconds: float = 0.0
    overlaps: int = 0  # chunks/frames writing over data already received
    out_of_order: int = 0  # chunks/frames stamped before the previous one of their stream
    late_drops: int = 0  # chunks/frames (partly) for turns already emitted
    too_far_ahead: int = 0  # chunks/frames (partly) beyond the buffered window
    resampled_chunks: int = 0
    clock_jumps: int = 0  # confirmed stamp jumps: timeline resets
    outlier_stamps: int = 0  # messages whose stamps fitted neither the timeline nor a confirmed jump: dropped
    rejected: int = 0  # malformed input that was dropped (audio: see audio_faults; motion: wrong size, NaN)
    complete_turns: int = 0
    deadline_turns: int = 0
    silence_filled_samples: int = 0
    held_motion_frames: int = 0  # missing partner frames filled (held or eased)
    eased_motion_frames: int = 0  # of those, frames past motion_hold (eased towards or at neutral)


@dataclass
class TurnStats:
    reason: str  # "complete" | "deadline"
    user_audio_missing: int  # samples filled with silence
    agent_audio_missing: int
    user_motion_missing: int  # frames filled by holding the last frame


@dataclass
class Turn:
    index: int  # turn index on the current timeline (0 = first turn after t0 / the last reset)
    epoch: int  # number of timeline resets before this turn
    start_time: float  # t0 + index (seconds, same clock as the stamps)
    user_speech: np.ndarray  # (samples_per_turn,) float32, raw (not normalised)
    user_motion: np.ndarray  # (frames_per_turn, 56) float32
    agent_speech: np.ndarray  # (samples_per_turn,) float32
    stats: TurnStats


class InputError(ValueError):
    """A malformed chunk or frame (it is counted in `counters.rejected` and not used). `kind`: an AUDIO_FAULTS
    key for audio, "motion" for a partner frame."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------- audio sanitising
AUDIO_RATE_RANGE = (8000, 192000)  # Hz a chunk may have (below: the front-end's band is empty; above: no device)
MAX_RESAMPLE_TERMS = 1000  # the resampling ratio up/down uses terms up to this; odd rates are approximated

# kind -> what happens to the chunk; the first four repair it, the others drop it
AUDIO_FAULTS: dict[str, str] = {
    "nonfinite": "NaN/Inf samples set to 0",
    "clipped": "samples beyond [-1, 1] clipped",
    "multichannel": "channels downmixed to mono",
    "rate_changed": "sample rate changed within the stream (each chunk is resampled from its own rate)",
    "empty": "chunk without samples dropped",
    "all_nonfinite": "chunk without one finite sample dropped",
    "misaligned": "chunk whose length is not a multiple of its channel count dropped",
    "bad_channels": "chunk with a channel count < 1 dropped",
    "bad_rate": f"chunk with a sample rate outside [{AUDIO_RATE_RANGE[0]}, {AUDIO_RATE_RANGE[1]}] Hz dropped",
    "too_long": "chunk longer than the buffered window dropped",
    "bad_stamp": "chunk with a non-finite stamp dropped",
}


@dataclass
class AudioFaultCounters:
    """Chunks of one audio stream per AUDIO_FAULTS kind (a chunk may count under several repair kinds)."""

    nonfinite: int = 0
    clipped: int = 0
    multichannel: int = 0
    rate_changed: int = 0
    empty: int = 0
    all_nonfinite: int = 0
    misaligned: int = 0
    bad_channels: int = 0
    bad_rate: int = 0
    too_long: int = 0
    bad_stamp: int = 0


assert [f.name for f in fields(AudioFaultCounters)] == list(AUDIO_FAULTS)


def resample(x: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of mono float32 samples; a ratio with terms beyond MAX_RESAMPLE_TERMS (an odd rate
    such as 44099 Hz) is approximated by the nearest one within them (relative error < 1e-6), which keeps the
    filter short."""
    if sample_rate == target_rate:
        return x.astype(np.float32, copy=False)
    r = Fraction(int(target_rate), int(sample_rate))
    if max(r.numerator, r.denominator) > MAX_RESAMPLE_TERMS:
        r = r.limit_denominator(MAX_RESAMPLE_TERMS)
    return resample_poly(x, r.numerator, r.denominator).astype(np.float32)


def sanitize_audio(
    data, sample_rate: int, channels: int, target_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> tuple[np.ndarray, list[str]]:
    """Interleaved samples (N * channels,) at sample_rate -> (mono float32 at target_rate, the repair kinds
    applied). Raises InputError(kind) for a chunk that cannot be used (see AUDIO_FAULTS)."""
    if int(channels) < 1:
        raise InputError(f"audio chunk: channels must be >= 1, got {channels}", "bad_channels")
    lo, hi = AUDIO_RATE_RANGE
    if not lo <= sample_rate <= hi:
        raise InputError(f"audio chunk: sample_rate {sample_rate} Hz outside [{lo}, {hi}]", "bad_rate")
    raw = np.asarray(data).reshape(-1)
    if raw.size == 0:
        raise InputError("audio chunk: no samples", "empty")
    if max_seconds is not None and raw.size > max_seconds * sample_rate * channels:
        raise InputError(f"audio chunk: {raw.size / (sample_rate * channels):.1f} s is longer than the "
                         f"{max_seconds:g} s buffered", "too_long")
    if raw.size % channels:
        raise InputError(f"audio chunk: {raw.size} samples is not a multiple of channels={channels}", "misaligned")
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range becomes inf, then 0
        x = raw.astype(np.float32)
    kinds: list[str] = []
    finite = np.isfinite(x)
    if not finite.all():
        if not finite.any():
            raise InputError("audio chunk: contains no finite sample (NaN or infinite)", "all_nonfinite")
        x = np.where(finite, x, np.float32(0.0))
        kinds.append("nonfinite")
    if np.abs(x).max() > 1.0:
        x = np.clip(x, -1.0, 1.0)
        kinds.append("clipped")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
        kinds.append("multichannel")
    return resample(x, int(sample_rate), target_rate), kinds


def to_mono_16k(data: np.ndarray, sample_rate: int, channels: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Interleaved samples (N * channels,) at sample_rate -> mono float32 at target_rate; strict: any chunk
    that is not clean (non-finite, bad rate or channel count) raises InputError."""
    if channels < 1:
        raise InputError(f"audio chunk: channels must be >= 1, got {channels}", "bad_channels")
    if sample_rate <= 0:
        raise InputError(f"audio chunk: sample_rate must be > 0, got {sample_rate}", "bad_rate")
    x = np.asarray(data, dtype=np.float32).reshape(-1)
    if x.size % channels:
        raise InputError(f"audio chunk: {x.size} samples is not a multiple of channels={channels}", "misaligned")
    if not np.all(np.isfinite(x)):
        raise InputError("audio chunk: contains NaN or infinite samples", "nonfinite")
    return resample(x.reshape(-1, channels).mean(axis=1), int(sample_rate), target_rate)


class _Stream:
    """Per-stream bookkeeping: high-water mark (in timeline units) and the previous stamp."""

    def __init__(self) -> None:
        self.end: int | None = None  # one past the last sample/frame index received
        self.last_stamp: float | None = None


@dataclass
class _Candidate:
    """A message held because its stamp does not fit the timeline (a clock jump until proven an outlier)."""

    stream: str  # "user_audio" | "motion"
    stamp: float
    add: Callable[[], None]  # adds the (already validated) message to the timeline


class TurnAssembler:
    def __init__(self, config: AssemblerConfig | None = None, origin: float | None = None) -> None:
        self.config = config or AssemblerConfig()
        self.counters = AssemblerCounters()
        self.audio_faults = {"user": AudioFaultCounters(), "agent": AudioFaultCounters()}
        self.on_note: Callable[[str, str], None] | None = None  # (kind, text) of every fault and resync
        self.epoch = 0
        self._rates: dict[str, int] = {}  # audio stream -> sample rate of its last chunk
        self._candidates: list[_Candidate] = []
        self._old_frontier: float | None = None  # newest stamp of the timeline before the last confirmed jump
        self._reset_timeline(origin)

    # ---------------------------------------------------------------- timeline
    def _reset_timeline(self, origin: float | None) -> None:
        self.origin: float | None = origin
        self.next_index = 0  # the next turn to emit
        self._user_audio = _Stream()
        self._agent_audio = _Stream()
        self._motion = _Stream()
        # turn index -> (buffer, filled mask)
        self._ua: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._aa: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._um: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._last_motion = np.zeros(MOTION_DIM, dtype=np.float32)  # held frame (neutral before any data)
        self._last_motion_frame: int | None = None  # timeline frame index of the last real partner frame
        self._pending_agent: list[tuple[float, np.ndarray]] = []  # agent audio before the origin exists
        self._last_user_time: float | None = None  # end time of the latest user data (for idle_timeout)

    def set_origin(self, t0: float) -> None:
        """Fix t0 explicitly (otherwise the first user audio/motion stamp). Clears all buffered data."""
        self._reset_timeline(float(t0))
        self._flush_pending_agent()

    def reset(self) -> None:
        """Forget the timeline (next user data defines a new t0) and any held jump candidates. Starts a new
        epoch."""
        self.epoch += 1
        self._candidates = []
        self._old_frontier = None
        self._reset_timeline(None)

    def turn_start(self, index: int) -> float:
        if self.origin is None:
            raise RuntimeError("TurnAssembler: no origin yet (no user data and no set_origin)")
        return self.origin + index * self.config.turn_seconds

    @property
    def buffered_turns(self) -> int:
        return len(set(self._ua) | set(self._aa) | set(self._um))

    def _note(self, kind: str, text: str) -> None:
        if self.on_note is not None:
            self.on_note(kind, text)

    def frontier(self) -> float | None:
        """The newest stamp of the user streams on this timeline (None before any)."""
        stamps = [s.last_stamp for s in (self._user_audio, self._motion) if s.last_stamp is not None]
        return max(stamps) if stamps else None

    def _fits(self, stamp: float, back_ref: float | None, forward_ref: float | None) -> bool:
        cfg = self.config
        if back_ref is not None and stamp < back_ref - cfg.max_jump_back:
            return False
        return forward_ref is None or stamp <= forward_ref + cfg.max_jump_forward

    def _admit(self, name: str, stream: _Stream, stamp: float, add: Callable[[], None]) -> None:
        """Add a user message now if its stamp fits the timeline; else hold it as a jump candidate (see the
        module doc): `jump_confirm` candidates that fit each other reset the timeline and are replayed."""
        cfg = self.config
        frontier = self.frontier()
        old = self._old_frontier
        if old is not None and frontier is not None and self.origin is not None and (
            self.origin < old <= frontier + cfg.max_jump_back  # a jump back, and the new timeline caught up
            or frontier - self.origin > cfg.max_jump_forward  # long after the jump: nothing left in flight
        ):
            old = self._old_frontier = None
        if old is not None and frontier is not None and abs(stamp - old) <= cfg.max_jump_back \
                and abs(stamp - frontier) > cfg.max_jump_back:  # still in flight from before the jump
            self._count_outliers([_Candidate(name, stamp, add)], frontier)
            return
        back_ref = stream.last_stamp if stream.last_stamp is not None else self.origin
        if self._fits(stamp, back_ref, frontier):
            outliers = [c for c in self._candidates if c.stream == name]
            if outliers:  # the stream is back on the timeline: its held messages were outliers
                self._candidates = [c for c in self._candidates if c.stream != name]
                self._count_outliers(outliers, frontier)
            add()
            return
        held = self._candidates
        if held and not self._fits(stamp, min(c.stamp for c in held), max(c.stamp for c in held)):
            self._candidates = []
            self._count_outliers(held, frontier)
        self._candidates.append(_Candidate(name, float(stamp), add))
        if len(self._candidates) < self.config.jump_confirm:
            return
        held, self._candidates = self._candidates, []
        self.counters.clock_jumps += 1
        self.epoch += 1
        self._note("clock_jump", f"stamps jumped {held[0].stamp - (frontier or 0.0):+.3f} s: the timeline "
                                 f"starts again (epoch {self.epoch})")
        self._reset_timeline(None)
        self._old_frontier = frontier
        for c in held:  # the first one defines the new origin
            self._admit(c.stream, self._user_audio if c.stream == "user_audio" else self._motion, c.stamp, c.add)

    def _count_outliers(self, held: list[_Candidate], frontier: float | None) -> None:
        self.counters.outlier_stamps += len(held)
        worst = max(held, key=lambda c: abs(c.stamp - (frontier or c.stamp)))
        self._note("outlier_stamp", f"dropped {len(held)} message(s) stamped {worst.stamp - (frontier or 0.0):+.3f} s "
                                    "off the timeline (not followed by others)")

    def _ensure_origin(self, stamp: float) -> None:
        if self.origin is None:
            self.origin = float(stamp)
            self._flush_pending_agent()

    # ---------------------------------------------------------------- inputs
    def add_user_audio(
        self, stamp: float, data: np.ndarray, sample_rate: int = SAMPLE_RATE, channels: int = 1
    ) -> None:
        """Audio chunk whose first sample is at `stamp` (s). Raises InputError for a chunk that cannot be used."""
        x = self._prepare_audio("user", stamp, data, sample_rate, channels)
        stamp = float(stamp)

        def add() -> None:
            self._ensure_origin(stamp)
            self._write_audio(self._user_audio, self._ua, stamp, x)
            self._note_user_time(stamp + x.size / self.config.sample_rate)

        self._admit("user_audio", self._user_audio, stamp, add)

    def add_agent_audio(
        self, stamp: float, data: np.ndarray, sample_rate: int = SAMPLE_RATE, channels: int = 1
    ) -> None:
        """The agent's own speech; may arrive early with future stamps, and may be absent for any time (the
        robot is silent), so its stamps never reset the timeline: only the user streams do."""
        x = self._prepare_audio("agent", stamp, data, sample_rate, channels)
        if self.origin is None:
            # keep it until a user stream defines t0; bounded to max_buffered_turns of audio
            self._pending_agent.append((float(stamp), x))
            budget = self.config.max_buffered_turns * self.config.samples_per_turn
            while sum(c.size for _, c in self._pending_agent) > budget:
                self._pending_agent.pop(0)
                self.counters.too_far_ahead += 1
            return
        self._write_audio(self._agent_audio, self._aa, stamp, x)

    def add_user_motion(self, stamp: float, frame: np.ndarray) -> None:
        """One 56-d motion frame [expression 50 | jaw 3 | head rotation 3] captured at `stamp`."""
        f = np.asarray(frame, dtype=np.float32).reshape(-1)
        if f.size != MOTION_DIM:
            self.counters.rejected += 1
            raise InputError(f"user motion frame: expected {MOTION_DIM} values, got {f.size}", "motion")
        if not np.all(np.isfinite(f)):
            self.counters.rejected += 1
            raise InputError("user motion frame: contains NaN or infinite values", "motion")
        if not np.isfinite(stamp):
            self.counters.rejected += 1
            raise InputError(f"user motion frame: stamp must be finite, got {stamp}", "motion")
        stamp = float(stamp)
        self._admit("motion", self._motion, stamp, lambda: self._add_motion(stamp, f))

    def _add_motion(self, stamp: float, f: np.ndarray) -> None:
        self._ensure_origin(stamp)
        cfg = self.config
        self.counters.motion_frames += 1
        s = self._motion
        if s.last_stamp is not None and stamp < s.last_stamp:
            self.counters.out_of_order += 1
        s.last_stamp = stamp
        idx = int(round((stamp - self.origin) * cfg.fps))
        turn, i = divmod(idx, cfg.frames_per_turn)
        s.end = max(s.end if s.end is not None else idx + 1, idx + 1)
        end_time = self.origin + (idx + 1) / cfg.fps
        self._note_user_time(end_time)
        if turn < self.next_index:
            self.counters.late_drops += 1
            return
        if turn >= self.next_index + cfg.max_buffered_turns:
            self.counters.too_far_ahead += 1
            return
        fpt = cfg.frames_per_turn
        buf, mask = self._um.setdefault(turn, (np.zeros((fpt, MOTION_DIM), np.float32), np.zeros(fpt, bool)))
        if mask[i]:
            self.counters.overlaps += 1
        buf[i] = f
        mask[i] = True

    def _note_user_time(self, end_time: float) -> None:
        if self._last_user_time is None or end_time > self._last_user_time:
            self._last_user_time = end_time

    def _prepare_audio(self, who: str, stamp: float, data, sample_rate: int, channels: int) -> np.ndarray:
        """Sanitised mono samples of one chunk of the `who` ("user" | "agent") stream; every fault counted per
        kind and noted; InputError when the chunk is dropped."""
        faults = self.audio_faults[who]
        cfg = self.config
        try:
            if not np.isfinite(stamp):
                raise InputError(f"audio chunk: stamp must be finite, got {stamp}", "bad_stamp")
            x, kinds = sanitize_audio(data, sample_rate, channels, cfg.sample_rate,
                                      max_seconds=cfg.max_buffered_turns * cfg.turn_seconds)
        except InputError as e:
            self.counters.rejected += 1
            setattr(faults, e.kind, getattr(faults, e.kind) + 1)
            self._note(f"{who}_audio.{e.kind}", f"{who} audio: {AUDIO_FAULTS[e.kind]} ({e})")
            raise
        if self._rates.setdefault(who, int(sample_rate)) != sample_rate:
            kinds.append("rate_changed")
            self._note(f"{who}_audio.rate_changed", f"{who} audio: sample rate changed from "
                                                     f"{self._rates[who]} to {sample_rate} Hz")
            self._rates[who] = int(sample_rate)
        for kind in kinds:
            setattr(faults, kind, getattr(faults, kind) + 1)
            if kind != "rate_changed":
                self._note(f"{who}_audio.{kind}", f"{who} audio: {AUDIO_FAULTS[kind]}")
        if sample_rate != cfg.sample_rate:
            self.counters.resampled_chunks += 1
        self.counters.audio_chunks += 1
        return x

    def _flush_pending_agent(self) -> None:
        pending, self._pending_agent = self._pending_agent, []
        for stamp, x in pending:
            self._write_audio(self._agent_audio, self._aa, stamp, x)

    def _write_audio(
        self, stream: _Stream, buffers: dict[int, tuple[np.ndarray, np.ndarray]], stamp: float, x: np.ndarray
    ) -> None:
        cfg = self.config
        spt = cfg.samples_per_turn
        if stream.last_stamp is not None and stamp < stream.last_stamp:
            self.counters.out_of_order += 1
        stream.last_stamp = stamp
        start = int(round((stamp - self.origin) * cfg.sample_rate))
        if stream.end is not None:
            tol = int(round(cfg.jitter_tolerance * cfg.sample_rate))
            if abs(start - stream.end) <= tol:
                start = stream.end  # contiguous up to stamp jitter
            elif start > stream.end:
                self.counters.gaps += 1
                self.counters.gap_seconds += (start - stream.end) / cfg.sample_rate
        end = start + x.size
        stream.end = end if stream.end is None else max(stream.end, end)
        if x.size == 0:
            return
        lo_allowed = self.next_index * spt
        hi_allowed = (self.next_index + cfg.max_buffered_turns) * spt
        if start < lo_allowed:
            self.counters.late_drops += 1
        if end > hi_allowed:
            self.counters.too_far_ahead += 1
        a, b = max(start, lo_allowed), min(end, hi_allowed)
        overlapped = False
        n = a
        while n < b:  # split the chunk over the turns it spans
            turn, off = divmod(n, spt)
            m = min(b - n, spt - off)
            buf, mask = buffers.setdefault(turn, (np.zeros(spt, np.float32), np.zeros(spt, bool)))
            overlapped |= bool(mask[off : off + m].any())
            buf[off : off + m] = x[n - start : n - start + m]
            mask[off : off + m] = True
            n += m
        if overlapped:
            self.counters.overlaps += 1

    # ---------------------------------------------------------------- output
    def _covered(self, stream: _Stream, units_per_turn: int, k: int) -> bool:
        return stream.end is not None and stream.end >= (k + 1) * units_per_turn

    def _is_complete(self, k: int) -> bool:
        cfg = self.config
        if not self._covered(self._user_audio, cfg.samples_per_turn, k):
            return False
        if cfg.expect_agent_audio and not self._covered(self._agent_audio, cfg.samples_per_turn, k):
            return False
        if cfg.expect_user_motion and not self._covered(self._motion, cfg.frames_per_turn, k):
            return False
        return True

    def poll(self, now: float | None = None) -> list[Turn]:
        """Emit every turn that is complete, or (with `now`, same clock as the stamps) past its deadline."""
        out: list[Turn] = []
        if self.origin is None:
            return out
        cfg = self.config
        while True:
            k = self.next_index
            end_time = self.turn_start(k) + cfg.turn_seconds
            if self._is_complete(k):
                reason = "complete"
            elif (
                now is not None
                and now >= end_time + cfg.deadline
                and self._last_user_time is not None
                and end_time <= self._last_user_time + cfg.idle_timeout
            ):
                reason = "deadline"
            else:
                break
            out.append(self._emit(k, reason))
        return out

    def _emit(self, k: int, reason: str) -> Turn:
        cfg = self.config
        spt, fpt = cfg.samples_per_turn, cfg.frames_per_turn
        ua, ua_mask = self._ua.pop(k, (np.zeros(spt, np.float32), np.zeros(spt, bool)))
        aa, aa_mask = self._aa.pop(k, (np.zeros(spt, np.float32), np.zeros(spt, bool)))
        um, um_mask = self._um.pop(k, (np.zeros((fpt, MOTION_DIM), np.float32), np.zeros(fpt, bool)))
        motion = np.empty((fpt, MOTION_DIM), np.float32)
        hold, ease = cfg.motion_hold * cfg.fps, cfg.motion_ease * cfg.fps  # in frames
        for i in range(fpt):  # a missing frame: hold the last one, then ease to neutral
            if um_mask[i]:
                self._last_motion, self._last_motion_frame = um[i], k * fpt + i
                motion[i] = um[i]
                continue
            age = k * fpt + i - (self._last_motion_frame if self._last_motion_frame is not None else -1)
            motion[i] = hold_then_ease(self._last_motion, [age], hold, ease)[0]
            self.counters.eased_motion_frames += int(ease_weights(age, hold, ease) > 0.0)
        stats = TurnStats(
            reason=reason,
            user_audio_missing=int(spt - ua_mask.sum()),
            agent_audio_missing=int(spt - aa_mask.sum()),
            user_motion_missing=int(fpt - um_mask.sum()),
        )
        self.counters.silence_filled_samples += stats.user_audio_missing
        self.counters.held_motion_frames += stats.user_motion_missing
        if reason == "complete":
            self.counters.complete_turns += 1
        else:
            self.counters.deadline_turns += 1
        self.next_index = k + 1
        return Turn(k, self.epoch, self.turn_start(k), ua, motion, aa, stats)

    def counters_dict(self) -> dict[str, float]:
        return asdict(self.counters)

    def audio_faults_dict(self) -> dict[str, int]:
        """{"user.nonfinite": n, ..., "agent.too_long": n}: chunks per stream and AUDIO_FAULTS kind."""
        return {f"{who}.{k}": v for who, c in self.audio_faults.items() for k, v in asdict(c).items()}


# -------------------------------------------------------------------- player
@dataclass
class ScheduledFrame:
    turn_index: int
    frame_index: int
    stamp: float  # display time (s)
    motion: np.ndarray  # (56,) float32


@dataclass
class PlayerCounters:
    frames_scheduled: int = 0
    frames_released: int = 0
    late_frames: int = 0  # released after their display time + late_tolerance
    dropped_frames: int = 0  # too late (max_lateness) or not after the previously released stamp
    max_lateness_seen: float = 0.0


@dataclass
class MotionPlayer:
    """Display-time scheduling of generated turns (pure logic; the node calls `due(now)` from a timer)."""

    fps: int = FPS
    output_delay: float = OUTPUT_DELAY  # s; display stamp = turn start + i / fps + output_delay
    publish_lead: float = 0.0  # s; a frame is released this long before its display stamp
    late_tolerance: float = 0.005  # s; later than this counts as a late frame
    max_lateness: float = 0.5  # s; frames later than this are dropped instead of released
    counters: PlayerCounters = field(default_factory=PlayerCounters)

    def __post_init__(self) -> None:
        self._queue: list[ScheduledFrame] = []
        self._last_stamp: float | None = None

    def schedule(self, turn_index: int, start_time: float, frames: np.ndarray) -> list[ScheduledFrame]:
        """Display-stamped frames of one turn (no queueing)."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != MOTION_DIM:
            raise ValueError(f"MotionPlayer: frames must be (T, {MOTION_DIM}), got {frames.shape}")
        return [
            ScheduledFrame(turn_index, i, start_time + i / self.fps + self.output_delay, frames[i])
            for i in range(frames.shape[0])
        ]

    def push(self, turn_index: int, start_time: float, frames: np.ndarray) -> None:
        new = self.schedule(turn_index, start_time, frames)
        self.counters.frames_scheduled += len(new)
        self._queue.extend(new)
        self._queue.sort(key=lambda f: f.stamp)

    def next_release_time(self) -> float | None:
        return self._queue[0].stamp - self.publish_lead if self._queue else None

    def due(self, now: float) -> list[ScheduledFrame]:
        """Frames whose release time has come, in stamp order; stale or non-monotonic ones are dropped."""
        out: list[ScheduledFrame] = []
        while self._queue and self._queue[0].stamp - self.publish_lead <= now:
            f = self._queue.pop(0)
            lateness = now - f.stamp
            if lateness > self.max_lateness or (self._last_stamp is not None and f.stamp <= self._last_stamp):
                self.counters.dropped_frames += 1
                continue
            if lateness > self.late_tolerance:
                self.counters.late_frames += 1
            self.counters.max_lateness_seen = max(self.counters.max_lateness_seen, lateness)
            self.counters.frames_released += 1
            self._last_stamp = f.stamp
            out.append(f)
        return out

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        """Forget queued frames and the monotonic guard (after a timeline reset)."""
        self._queue.clear()
        self._last_stamp = None
