"""LiveAgent: the live loop of the TIMAR agent, with no ROS in it.

    stamped inputs ──> TurnAssembler ──> turn queue ──> worker: StreamingGenerator.step ──> on_turn(GeneratedTurn)
                                                                      │
                                                                      └─> MotionPlayer ──> clock thread ──> on_frames

- Inputs (`add_user_audio`, `add_agent_audio`, `add_user_motion`) come from any thread (a ROS callback, a
  test); a malformed one is counted and its reason returned, never raised.
- A clock thread calls the assembler's deadline poll and releases frames at their display time
  (stamp - publish_lead), both on `clock()`, the clock of the input stamps.
- The worker generates one turn at a time. As soon as a turn is generated, `on_turn` receives all its frames
  with their display stamps (a controller can plan ahead: the first is due `output_delay` after the turn's
  start); `on_frames` later receives each frame when it is due.
- Timeline resets (the assembler's epoch: a stamp jump, a replayed bag) reset the model's context and drop
  turns and frames of the old timeline (counted as stale).
- If turns wait while one is generated (generation slower than real time), the oldest waiting ones are
  skipped (counted) so the output stays near real time.
- `start()` / `stop()` can alternate any number of times (a lifecycle node's activate / deactivate). Each run
  has its own queue and stop event, and one lock serialises every use of the generator, so a worker of a
  previous run that is still inside a generation step can neither run concurrently with the next run's
  worker nor publish into it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from queue import Queue

import numpy as np

from timar_model.runtime.turns import (
    OUTPUT_DELAY,
    AssemblerConfig,
    InputError,
    MotionPlayer,
    ScheduledFrame,
    Turn,
    TurnAssembler,
    TurnStats,
)

POLL_PERIOD = 0.01  # s; the clock thread's longest sleep (deadline polls)


def inference_threads(requested: int, cores: int | None = None) -> int:
    """torch CPU threads for inference: `requested`, or for 0 half the cores (at least 1), so that the other
    nodes of the graph and DDS keep a core."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 = half the cores), got {requested}")
    if requested:
        return requested
    return max(1, (cores or os.cpu_count() or 1) // 2)


@dataclass
class LiveConfig:
    output_delay: float = OUTPUT_DELAY  # s; frame i of the turn starting at t is shown at t + i / fps + output_delay
    publish_lead: float = 0.0  # s; frames are handed to on_frames this long before their display time
    deadline: float = 0.08  # s after a turn's end when it is generated even if data is missing
    expect_agent_audio: bool = False  # wait for agent audio to cover each turn (else absent = silence)
    expect_user_motion: bool = True  # wait for user motion to cover each turn (else hold the last frame)
    idle_timeout: float = 3.0  # s; no deadline turns once user input stopped this long ago
    motion_hold: float = AssemblerConfig.motion_hold  # s; lost partner motion: hold the last frame this long ...
    motion_ease: float = AssemblerConfig.motion_ease  # s; ... then ease to neutral over this long
    max_waiting_turns: int = 2  # turns waiting beyond this are skipped, oldest first
    inference_cpu: int = -1  # pin the worker thread to this CPU (-1: no pinning)
    stop_timeout: float = 30.0  # s to wait for a generation step in progress when stopping

    def __post_init__(self) -> None:
        if self.output_delay < 0 or self.publish_lead < 0 or self.deadline < 0 or self.idle_timeout < 0:
            raise ValueError("LiveConfig: output_delay, publish_lead, deadline and idle_timeout must be >= 0")
        if self.max_waiting_turns < 0:
            raise ValueError("LiveConfig: max_waiting_turns must be >= 0")


@dataclass
class LiveCounters:
    turns_generated: int = 0
    turns_skipped: int = 0  # waiting turns dropped because generation fell behind
    stale_turns: int = 0  # turns of an old timeline dropped after a reset
    inference_errors: int = 0
    input_errors: int = 0  # malformed inputs (the assembler's `rejected` counts the same for audio/motion)
    resets: int = 0  # model context resets (new epoch)


@dataclass
class GeneratedTurn:
    index: int  # turn index on its timeline
    epoch: int
    start_time: float  # s, the turn's start on the input clock
    fps: int
    frames: list[ScheduledFrame]  # display-stamped frames of the turn, in order
    stats: TurnStats
    inference_s: float  # time inside the generator
    ready_latency_s: float  # clock time from the turn's end to the motion being ready

    @property
    def motion(self) -> np.ndarray:
        """(F, 56) float32."""
        return np.stack([f.motion for f in self.frames])


@dataclass
class _Run:
    """One start() .. stop() period: its own queue and stop event."""

    queue: Queue = field(default_factory=Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


def _percentile(xs, q: float) -> float:
    return float(np.percentile(list(xs), q)) if xs else float("nan")


class LiveAgent:
    def __init__(
        self,
        generator,
        config: LiveConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_turn: Callable[[GeneratedTurn], None] | None = None,
        on_frames: Callable[[list[ScheduledFrame]], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """generator: a StreamingGenerator (or anything with its step/reset/frames_per_turn/sample_rate and
        temperature/noise_correlation attributes). clock() -> now (s) on the clock of the input stamps."""
        self.gen = generator
        self.config = config or LiveConfig()
        self.clock = clock
        self.on_turn = on_turn
        self.on_frames = on_frames
        self.on_error = on_error
        cfg = self.config
        self.assembler = TurnAssembler(
            AssemblerConfig(
                sample_rate=generator.sample_rate,
                fps=generator.frames_per_turn,
                deadline=cfg.deadline,
                expect_agent_audio=cfg.expect_agent_audio,
                expect_user_motion=cfg.expect_user_motion,
                idle_timeout=cfg.idle_timeout,
                motion_hold=cfg.motion_hold,
                motion_ease=cfg.motion_ease,
            )
        )
        self.player = MotionPlayer(
            fps=generator.frames_per_turn, output_delay=cfg.output_delay, publish_lead=cfg.publish_lead
        )
        self.counters = LiveCounters()
        self._lock = threading.Lock()  # assembler, player, counters, _turn_end, _epoch
        self._gen_lock = threading.Lock()  # every use of the generator
        self._run: _Run | None = None
        self._epoch = 0  # epoch of the generator's current context
        self._turn_end: dict[tuple[int, int], float] = {}  # (epoch, turn) -> end time, until its first frame
        self._latency_first_frame: deque[float] = deque(maxlen=200)  # turn end -> first frame released
        self._latency_ready: deque[float] = deque(maxlen=200)  # turn end -> motion generated
        self._inference: deque[float] = deque(maxlen=200)

    # ------------------------------------------------------------------ run control
    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Start the worker and clock threads (a fresh timeline: inputs before this are forgotten)."""
        if self._run is not None:
            raise RuntimeError("LiveAgent.start: already running")
        run = _Run()
        run.threads = [
            threading.Thread(target=self._worker, args=(run,), name="timar-inference", daemon=True),
            threading.Thread(target=self._clock_loop, args=(run,), name="timar-clock", daemon=True),
        ]
        self._run = run
        for t in run.threads:
            t.start()

    def stop(self) -> bool:
        """Stop the threads (waits for a generation step in progress, up to config.stop_timeout) and forget the
        timeline and the queued turns and frames; the model's context is reset before the next turn. True if
        every thread ended in time (a worker still inside a step then ends without publishing)."""
        run, self._run = self._run, None
        if run is None:
            return True
        run.stop.set()
        run.queue.put(None)
        end = time.monotonic() + self.config.stop_timeout
        for t in run.threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        ok = not any(t.is_alive() for t in run.threads)
        with self._lock:  # a new epoch: the next run's first turn resets the generator's context
            self.assembler.reset()
            self.player.reset()
            self._turn_end.clear()
        return ok

    # ------------------------------------------------------------------ inputs (any thread)
    def _feed(self, fn, *args) -> str | None:
        if self._run is None:
            return "not running"
        with self._lock:
            try:
                fn(*args)
            except InputError as e:
                self.counters.input_errors += 1
                return str(e)
            finally:
                self._enqueue(self.assembler.poll(None))
        return None

    def add_user_audio(self, stamp: float, data: np.ndarray, sample_rate: int, channels: int = 1) -> str | None:
        """The user's audio chunk whose first sample is at `stamp`. None, or why it was dropped."""
        return self._feed(self.assembler.add_user_audio, stamp, data, sample_rate, channels)

    def add_agent_audio(self, stamp: float, data: np.ndarray, sample_rate: int, channels: int = 1) -> str | None:
        """The agent's own speech (may come early with future stamps). None, or why it was dropped."""
        return self._feed(self.assembler.add_agent_audio, stamp, data, sample_rate, channels)

    def add_user_motion(self, stamp: float, frame: np.ndarray) -> str | None:
        """One (56,) motion frame of the user captured at `stamp`. None, or why it was dropped."""
        return self._feed(self.assembler.add_user_motion, stamp, frame)

    def count_input_error(self) -> None:
        """A message the caller could not even convert (counted with the others)."""
        with self._lock:
            self.counters.input_errors += 1

    def _enqueue(self, turns: list[Turn]) -> None:  # caller holds _lock
        run = self._run
        for turn in turns:
            self._turn_end[(turn.epoch, turn.index)] = turn.start_time + self.assembler.config.turn_seconds
            while len(self._turn_end) > 64:  # bounded even if some turns never show a frame
                self._turn_end.pop(next(iter(self._turn_end)))
            if run is not None:
                run.queue.put(turn)

    # ------------------------------------------------------------------ sampling (live)
    def set_sampling(self, temperature: float | None = None, noise_correlation: float | None = None) -> None:
        """Change the sampling temperature and/or noise correlation; takes effect from the next turn."""
        if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if noise_correlation is not None and not 0.0 <= noise_correlation < 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1), got {noise_correlation}")
        with self._gen_lock:
            if temperature is not None:
                self.gen.temperature = float(temperature)
            if noise_correlation is not None:
                self.gen.noise_correlation = float(noise_correlation)

    # ------------------------------------------------------------------ threads
    def _next_turn(self, run: _Run) -> Turn | None:
        """The next turn to generate; skips waiting turns beyond max_waiting_turns and stale ones."""
        while not run.stop.is_set():
            turn = run.queue.get()
            if turn is None or run.stop.is_set():
                return None
            with self._lock:
                if turn.epoch != self.assembler.epoch:
                    self.counters.stale_turns += 1
                    continue
                if run.queue.qsize() > self.config.max_waiting_turns:
                    self.counters.turns_skipped += 1
                    continue
            return turn
        return None

    def _worker(self, run: _Run) -> None:
        cpu = self.config.inference_cpu
        if cpu >= 0:
            try:
                os.sched_setaffinity(threading.get_native_id(), {cpu})
            except (OSError, ValueError, AttributeError) as e:
                self._error(f"inference_cpu {cpu}: could not pin the inference thread: {e}")
        while True:
            turn = self._next_turn(run)
            if turn is None:
                return
            with self._gen_lock:
                if run.stop.is_set():
                    return
                if turn.epoch != self._epoch:  # a new timeline: new conversation context
                    self.gen.reset()
                    with self._lock:
                        self._epoch = turn.epoch
                        self.counters.resets += 1
                        self.player.reset()
                try:
                    motion = self.gen.step(turn.user_speech, turn.user_motion, turn.agent_speech)
                except Exception as e:  # noqa: BLE001 (a failed turn must not end the loop)
                    with self._lock:
                        self.counters.inference_errors += 1
                    self._error(f"inference failed for turn {turn.index}: {type(e).__name__}: {e}")
                    continue
                timings = dict(getattr(self.gen, "last_timings", {}) or {})
            if run.stop.is_set():
                return
            now = self.clock()
            with self._lock:
                if turn.epoch != self.assembler.epoch:  # reset while generating
                    self.counters.stale_turns += 1
                    continue
                frames = self.player.schedule(turn.index, turn.start_time, motion)
                end = turn.start_time + self.assembler.config.turn_seconds
                generated = GeneratedTurn(
                    index=turn.index,
                    epoch=turn.epoch,
                    start_time=turn.start_time,
                    fps=self.player.fps,
                    frames=frames,
                    stats=turn.stats,
                    inference_s=float(timings.get("total", float("nan"))),
                    ready_latency_s=now - end,
                )
                self.counters.turns_generated += 1
                self._inference.append(generated.inference_s)
                self._latency_ready.append(generated.ready_latency_s)
            if self.on_turn is not None:
                self.on_turn(generated)
            with self._lock:
                if turn.epoch == self.assembler.epoch and not run.stop.is_set():
                    self.player.push(turn.index, turn.start_time, motion)

    def _clock_loop(self, run: _Run) -> None:
        while not run.stop.is_set():
            now = self.clock()
            with self._lock:
                self._enqueue(self.assembler.poll(now))
                frames = self.player.due(now)
                nxt = self.player.next_release_time()
                for f in frames:
                    if f.frame_index == 0:
                        end = self._turn_end.pop((self._epoch, f.turn_index), None)
                        if end is not None:
                            self._latency_first_frame.append(now - end)
            if frames and self.on_frames is not None:
                self.on_frames(frames)
            wait = POLL_PERIOD if nxt is None else min(POLL_PERIOD, max(nxt - self.clock(), 0.0))
            if wait > 0:
                run.stop.wait(wait)

    def _error(self, text: str) -> None:
        if self.on_error is not None:
            self.on_error(text)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, float | int]:
        """Counters and latency percentiles (over the last 200 turns) for /diagnostics."""
        with self._lock:
            values: dict[str, float | int] = {
                **{f"assembler.{k}": v for k, v in self.assembler.counters_dict().items()},
                **{f"player.{k}": v for k, v in asdict(self.player.counters).items()},
                **asdict(self.counters),
                "queued_turns": self._run.queue.qsize() if self._run is not None else 0,
            }
            lat, ready, inf = list(self._latency_first_frame), list(self._latency_ready), list(self._inference)
        values.update(
            {
                "output_delay": self.config.output_delay,
                "latency_first_frame_ms_median": 1e3 * _percentile(lat, 50),
                "latency_first_frame_ms_p95": 1e3 * _percentile(lat, 95),
                "latency_ready_ms_median": 1e3 * _percentile(ready, 50),
                "latency_ready_ms_p95": 1e3 * _percentile(ready, 95),
                "inference_ms_median": 1e3 * _percentile(inf, 50),
                "inference_ms_p95": 1e3 * _percentile(inf, 95),
            }
        )
        return values

    def degraded(self) -> bool:
        """True once turns or frames were lost (late, skipped, failed): the node reports WARN."""
        with self._lock:
            return bool(
                self.assembler.counters.late_drops
                or self.player.counters.dropped_frames
                or self.counters.turns_skipped
                or self.counters.inference_errors
            )
