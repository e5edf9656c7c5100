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
- Timeline resets (the assembler's epoch: a confirmed stamp jump, a replayed bag) reset the model's context and
  drop turns and frames of the old timeline (counted as stale). The clock itself jumping (sim time restarted)
  by more than the assembler's jump bounds while the stamps are still on the old clock resets the timeline at
  once (`clock_resyncs`): no turn of the old timeline is generated after it.
- A turn whose frames would all be past due (later than the player's max_lateness) by the time it is taken
  from the queue is not generated (`expired_turns`): a clock ahead of the stamps never causes a burst of stale
  turns. A turn whose first frame is due more than the assembler's max_jump_forward after now (stamps far
  ahead of the clock) is not generated either (`early_turns`): no backlog of frames waiting for hours.
- If turns wait while one is generated (generation slower than real time), the oldest waiting ones are
  skipped (counted) so the output stays near real time.
- A turn without generated motion (skipped, or its inference raised, ran out of memory or returned NaN/Inf)
  is filled by the safe continuation (faults.Continuation: the last output frame held for motion_hold, then
  eased to neutral over motion_ease, the same easing as lost partner motion) and published like any other
  (`filled_turns`); the next generated turn starts from the last output frame. After a failure the model's
  context is reset and the next turn tried again; `max_inference_failures` failures in a row call
  `on_fatal(message)` once (the node's lifecycle error) and every later turn is filled until stop().
- Faults (bad audio, outlier stamps, clock jumps, failures) are counted and reported through `on_warning` /
  `on_error`, rate-limited per kind (faults.FaultLog: the first at once, then one line per warning_period s
  with the count).
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

from timar_model.runtime.faults import Continuation, FaultLog, is_out_of_memory, release_cached_memory
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
    max_inference_failures: int = 5  # failed turns in a row before on_fatal
    warning_period: float = 10.0  # s; each kind of fault is reported at once, then at most once per this
    inference_cpu: int = -1  # pin the worker thread to this CPU (-1: no pinning)
    stop_timeout: float = 30.0  # s to wait for a generation step in progress when stopping

    def __post_init__(self) -> None:
        if self.output_delay < 0 or self.publish_lead < 0 or self.deadline < 0 or self.idle_timeout < 0:
            raise ValueError("LiveConfig: output_delay, publish_lead, deadline and idle_timeout must be >= 0")
        if self.max_waiting_turns < 0:
            raise ValueError("LiveConfig: max_waiting_turns must be >= 0")
        if self.max_inference_failures < 1 or self.warning_period < 0:
            raise ValueError("LiveConfig: max_inference_failures must be >= 1 and warning_period >= 0")


@dataclass
class LiveCounters:
    turns_generated: int = 0
    turns_skipped: int = 0  # waiting turns not generated because generation fell behind (filled)
    stale_turns: int = 0  # turns of an old timeline dropped after a reset
    expired_turns: int = 0  # turns whose frames were all past due before generation: dropped
    early_turns: int = 0  # turns due further ahead of the clock than max_jump_forward: dropped
    filled_turns: int = 0  # turns published with the safe continuation (skipped or failed)
    inference_errors: int = 0  # failed generation steps (exception, out of memory, NaN/Inf output)
    out_of_memory: int = 0  # of those, allocation failures
    consecutive_failures: int = 0  # failed steps since the last good one
    input_errors: int = 0  # inputs dropped (the assembler's `rejected`, and messages the node could not convert)
    resets: int = 0  # model context resets (new epoch)
    clock_resyncs: int = 0  # timeline resets because the clock jumped away from the stamps


@dataclass
class GeneratedTurn:
    index: int  # turn index on its timeline
    epoch: int
    start_time: float  # s, the turn's start on the input clock
    fps: int
    frames: list[ScheduledFrame]  # display-stamped frames of the turn, in order
    stats: TurnStats
    inference_s: float  # time inside the generator (NaN for a filled turn)
    ready_latency_s: float  # clock time from the turn's end to the motion being ready
    filled: bool = False  # the safe continuation, not generated (skipped or failed turn)

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
        on_warning: Callable[[str], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        """generator: a StreamingGenerator (or anything with its step/reset/frames_per_turn/sample_rate and
        temperature/noise_correlation attributes). clock() -> now (s) on the clock of the input stamps.
        on_error / on_warning receive rate-limited report lines; on_fatal the message once when
        max_inference_failures steps in a row failed (called from the inference thread)."""
        self.gen = generator
        self.config = config or LiveConfig()
        self.clock = clock
        self.on_turn = on_turn
        self.on_frames = on_frames
        self.on_error = on_error
        self.on_warning = on_warning
        self.on_fatal = on_fatal
        cfg = self.config
        self.faults = FaultLog(cfg.warning_period)
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
        self.assembler.on_note = lambda kind, text: self._warn(kind, text)
        self.player = MotionPlayer(
            fps=generator.frames_per_turn, output_delay=cfg.output_delay, publish_lead=cfg.publish_lead
        )
        fps = self.assembler.config.fps
        self.continuation = Continuation(self._motion_dim(), cfg.motion_hold * fps, cfg.motion_ease * fps)
        self.counters = LiveCounters()
        self.fatal: str | None = None  # the message once max_inference_failures was reached (until start())
        self._lock = threading.Lock()  # assembler, player, counters, _turn_end, _epoch
        self._gen_lock = threading.Lock()  # every use of the generator
        self._run: _Run | None = None
        self._epoch = 0  # epoch of the generator's current context
        self._turn_end: dict[tuple[int, int], float] = {}  # (epoch, turn) -> end time, until its first frame
        self._latency_first_frame: deque[float] = deque(maxlen=200)  # turn end -> first frame released
        self._latency_ready: deque[float] = deque(maxlen=200)  # turn end -> motion generated
        self._inference: deque[float] = deque(maxlen=200)
        self._last_clock: float | None = None  # the clock thread's previous reading

    def _motion_dim(self) -> int:
        from timar_model.motion import MOTION_DIM

        cfg = getattr(self.gen, "config", None)
        return int(getattr(cfg, "motion_dim", MOTION_DIM))

    # ------------------------------------------------------------------ run control
    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Start the worker and clock threads (a fresh timeline: inputs before this are forgotten)."""
        if self._run is not None:
            raise RuntimeError("LiveAgent.start: already running")
        with self._lock:
            self.continuation.reset()
            self.fatal = None
            self.counters.consecutive_failures = 0
            self._last_clock = None
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
        """None, or why the input was dropped (counted; the assembler has reported it by kind)."""
        if self._run is None:
            return "not running"
        with self._lock:
            try:
                fn(*args)
            except InputError as e:
                self.counters.input_errors += 1
                if e.kind == "motion":
                    self._warn("user_motion.malformed", f"user motion: frame dropped ({e})")
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

    def report_input_error(self, source: str, reason: str) -> None:
        """A message the caller could not even convert (e.g. a malformed ROS message on `source`): counted with
        the other dropped inputs and reported (rate-limited)."""
        with self._lock:
            self.counters.input_errors += 1
        self._warn(f"{source}.malformed", f"{source}: message dropped ({reason})")

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
    def _next_turn(self, run: _Run) -> tuple[Turn, bool] | None:
        """The next turn and whether to generate it (False: fill it, it is skipped because turns wait beyond
        max_waiting_turns, or the agent has failed for good); stale and expired turns are dropped."""
        while not run.stop.is_set():
            turn = run.queue.get()
            if turn is None or run.stop.is_set():
                return None
            with self._lock:
                if turn.epoch != self.assembler.epoch:
                    self.counters.stale_turns += 1
                    continue
                acfg = self.assembler.config
                first_due = turn.start_time + self.config.output_delay
                late = self.clock() - (first_due + (acfg.frames_per_turn - 1) / self.player.fps)
                early = first_due - self.clock()
                if late > self.player.max_lateness:
                    self.counters.expired_turns += 1
                    why = f"its last frame was due {late:.2f} s ago (input stamps behind the clock?"
                elif early > acfg.max_jump_forward:
                    self.counters.early_turns += 1
                    why = f"its first frame is due in {early:.2f} s (input stamps ahead of the clock?"
                else:
                    why = ""
                skip = run.queue.qsize() > self.config.max_waiting_turns
                if skip and not why:
                    self.counters.turns_skipped += 1
            if why:
                self._warn("untimely_turn", f"turn {turn.index} dropped: {why} use_sim_time for a replayed bag)")
                continue
            return turn, not skip and self.fatal is None
        return None

    def _inference_failed(self, turn: Turn, e: BaseException) -> str | None:
        """Count and report a failed step; reset the model's context (the next turn starts clean, and a shorter
        window needs less memory). The fatal message when this failure reaches max_inference_failures in a
        row (once), else None."""
        oom = is_out_of_memory(e)
        if oom:
            release_cached_memory()
        with self._lock:
            c = self.counters
            c.inference_errors += 1
            c.out_of_memory += int(oom)
            c.consecutive_failures += 1
            failures = c.consecutive_failures
        what = "out of memory" if oom else "failed"
        self._report(f"inference.{type(e).__name__}",
                     f"inference {what} for turn {turn.index}: {type(e).__name__}: {e}; the turn is held and eased "
                     f"to neutral ({failures} in a row)", error=True)
        try:
            self.gen.reset()
        except Exception as e2:  # noqa: BLE001 (the next step will tell)
            self._report("reset", f"model context reset failed: {type(e2).__name__}: {e2}", error=True)
        if failures >= self.config.max_inference_failures and self.fatal is None:
            self.fatal = (f"inference failed {failures} turns in a row (last: {type(e).__name__}: {e}); the agent "
                          "holds its head and eases it to neutral; configure it again to reload the model")
            self._report("fatal", self.fatal, error=True)
            return self.fatal
        return None

    @staticmethod
    def _check_output(motion, frames: int) -> np.ndarray:
        m = np.asarray(motion, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != frames:
            raise ValueError(f"the model returned motion of shape {m.shape}, expected ({frames}, D)")
        if not np.isfinite(m).all():
            raise FloatingPointError(f"the model returned {int((~np.isfinite(m)).sum())} NaN/Inf values")
        return m

    def _worker(self, run: _Run) -> None:
        cpu = self.config.inference_cpu
        if cpu >= 0:
            try:
                os.sched_setaffinity(threading.get_native_id(), {cpu})
            except (OSError, ValueError, AttributeError) as e:
                self._error(f"inference_cpu {cpu}: could not pin the inference thread: {e}")
        fpt = self.assembler.config.frames_per_turn
        while True:
            nxt = self._next_turn(run)
            if nxt is None:
                return
            fatal: list[str] = []
            try:
                self._turn(run, *nxt, fpt, fatal)
            finally:  # once the failed turn went out, held (or the run stopped)
                if fatal and self.on_fatal is not None:
                    self.on_fatal(fatal[0])
            if run.stop.is_set():
                return

    def _turn(self, run: _Run, turn: Turn, generate: bool, fpt: int, fatal: list[str]) -> None:
        """Generate (or fill) one turn, hand it to on_turn and queue its frames; a fatal message goes to
        `fatal`."""
        motion, timings = None, {}
        with self._gen_lock:
            if run.stop.is_set():
                return
            if turn.epoch != self._epoch:  # a new timeline: new conversation context
                self.gen.reset()
                with self._lock:
                    self._epoch = turn.epoch
                    self.counters.resets += 1
                    self.player.reset()
            if generate:
                try:
                    motion = self._check_output(
                        self.gen.step(turn.user_speech, turn.user_motion, turn.agent_speech), fpt)
                except Exception as e:  # noqa: BLE001 (a failed turn must not end the loop)
                    message = self._inference_failed(turn, e)
                    if message is not None:
                        fatal.append(message)
                else:
                    timings = dict(getattr(self.gen, "last_timings", {}) or {})
        if run.stop.is_set():
            return
        now = self.clock()
        with self._lock:
            if turn.epoch != self.assembler.epoch:  # reset while generating
                self.counters.stale_turns += 1
                return
            filled = motion is None
            if filled:
                motion = self.continuation.fill(fpt)
                self.counters.filled_turns += 1
            else:
                motion = self.continuation.join(motion)
                self.counters.consecutive_failures = 0
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
                filled=filled,
            )
            if not filled:
                self.counters.turns_generated += 1
                self._inference.append(generated.inference_s)
                self._latency_ready.append(generated.ready_latency_s)
        if self.on_turn is not None:
            self.on_turn(generated)
        with self._lock:
            if turn.epoch == self.assembler.epoch and not run.stop.is_set():
                self.player.push(turn.index, turn.start_time, motion)

    def _check_clock(self, now: float) -> None:
        """The clock jumped (sim time restarted, a suspended process) beyond the assembler's jump bounds while
        the timeline's stamps are still on the old clock: reset the timeline now (caller holds _lock), so no
        turn of it is emitted on a deadline or generated late. If the stamps have jumped already (the
        assembler resynchronised first), nothing is left to do."""
        prev, self._last_clock = self._last_clock, now
        acfg = self.assembler.config
        if prev is None or prev - acfg.max_jump_back <= now <= prev + acfg.max_jump_forward:
            return
        frontier = self.assembler.frontier()
        if frontier is not None and abs(frontier - prev) < abs(frontier - now):
            self.assembler.reset()
            self.player.reset()
            self._turn_end.clear()
            self.counters.clock_resyncs += 1
            self._warn("clock_jump", f"the clock jumped {now - prev:+.3f} s: the timeline starts again with the "
                                     "next input")

    def _clock_loop(self, run: _Run) -> None:
        while not run.stop.is_set():
            now = self.clock()
            with self._lock:
                self._check_clock(now)
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

    def _report(self, kind: str, text: str, error: bool = False) -> None:
        """Rate-limited (per kind) report through on_error or on_warning."""
        line = self.faults.note(kind, text)
        if line is None:
            return
        if error:
            self._error(line)
        elif self.on_warning is not None:
            self.on_warning(line)

    def _warn(self, kind: str, text: str) -> None:
        self._report(kind, text)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, float | int]:
        """Counters and latency percentiles (over the last 200 turns) for /diagnostics."""
        with self._lock:
            values: dict[str, float | int] = {
                **{f"assembler.{k}": v for k, v in self.assembler.counters_dict().items()},
                **{f"audio_faults.{k}": v for k, v in self.assembler.audio_faults_dict().items()},
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
        """True once turns or frames were lost (late, skipped, expired, failed): the node reports WARN."""
        with self._lock:
            return bool(
                self.assembler.counters.late_drops
                or self.player.counters.dropped_frames
                or self.counters.turns_skipped
                or self.counters.expired_turns
                or self.counters.early_turns
                or self.counters.inference_errors
            )
