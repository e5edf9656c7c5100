"""LiveAgent (timar_model/runtime/live.py): the agent's live loop without ROS.

A tiny random TIMAR runs for real; the clock is a manual one the test advances, so frame release is
deterministic. Checked: live output equals offline streaming generation; every turn is handed to on_turn
before its first frame is due; stop -> start with a turn in flight generates again and the old run publishes
nothing; a stamp jump mid-turn starts a new context; slow generation skips turns instead of falling behind;
bad input and a failing step are counted and the loop goes on; sampling can change live.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE
from timar_model.runtime.live import LiveAgent, LiveConfig, inference_threads
from timar_model.runtime.streaming import StreamingGenerator

CHUNK = SAMPLE_RATE // 10


def tiny_model() -> TIMAR:
    torch.manual_seed(0)
    cfg = get_preset(
        "small", width=32, depth=1, num_heads=2, token_dim=32, speech_dim=32, diffloss_width=32,
        diffloss_depth=1, logmel_channels=16, context_turns=4,
    )
    model = TIMAR(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every prediction identical
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TIMAR:
    return tiny_model()


def clip(turns: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(turns * SAMPLE_RATE)).astype(np.float32)
    motion = (0.05 * rng.standard_normal((turns * FPS, MOTION_DIM))).astype(np.float32)
    return audio, motion


class ManualClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """Collects on_turn / on_frames calls (from the agent's threads)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.turns = []
        self.turn_times: list[float] = []
        self.frames = []
        self.lock = threading.Lock()

    def on_turn(self, turn) -> None:
        with self.lock:
            self.turns.append(turn)
            self.turn_times.append(self.clock())

    def on_frames(self, frames) -> None:
        with self.lock:
            self.frames.extend(frames)


def feed(agent: LiveAgent, audio: np.ndarray, motion: np.ndarray, t0: float, turns: range) -> None:
    """Feed whole turns of user audio (0.1 s chunks) and user motion stamped from t0."""
    for k in turns:
        for a in range(k * SAMPLE_RATE, (k + 1) * SAMPLE_RATE, CHUNK):
            assert agent.add_user_audio(t0 + a / SAMPLE_RATE, audio[a : a + CHUNK], SAMPLE_RATE) is None
        for f in range(k * FPS, (k + 1) * FPS):
            assert agent.add_user_motion(t0 + f / FPS, motion[f]) is None


def wait_for(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def advance(clock: ManualClock, to: float, step: float = 0.02) -> None:
    """Move the manual clock forward in small steps, giving the agent's clock thread time to release frames."""
    while clock.t < to:
        clock.t = min(to, clock.t + step)
        time.sleep(0.012)


def make_agent(gen, clock, rec, **cfg) -> LiveAgent:
    cfg.setdefault("expect_agent_audio", False)
    return LiveAgent(gen, LiveConfig(**cfg), clock=clock, on_turn=rec.on_turn, on_frames=rec.on_frames)


def test_live_output_equals_offline_generation_and_turns_come_ahead(model):
    turns, t0 = 6, 100.0
    audio, motion = clip(turns)
    offline = StreamingGenerator(model, seed=3)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    expected = np.concatenate(
        [offline.step(audio[k * SAMPLE_RATE : (k + 1) * SAMPLE_RATE], motion[k * FPS : (k + 1) * FPS], silence)
         for k in range(turns)]
    )
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    agent = make_agent(StreamingGenerator(model, seed=3), clock, rec, output_delay=1.5, idle_timeout=0.0)
    agent.start()
    try:
        for k in range(turns):
            feed(agent, audio, motion, t0, range(k, k + 1))  # complete at its end, the clock's time now
            wait_for(lambda k=k: len(rec.turns) == k + 1)
            advance(clock, t0 + k + 2.0)
        advance(clock, t0 + turns + 1.6)  # every frame is due
        wait_for(lambda: len(rec.frames) == turns * FPS)
    finally:
        assert agent.stop()
    live = np.stack([f.motion for f in rec.frames])
    np.testing.assert_allclose(live, expected, atol=1e-6)
    stamps = np.array([f.stamp for f in rec.frames])
    np.testing.assert_allclose(stamps, t0 + np.arange(turns * FPS) / FPS + 1.5, atol=1e-9)
    for turn, handed_at in zip(rec.turns, rec.turn_times):
        assert turn.frames[0].stamp - handed_at == pytest.approx(0.5)  # output_delay - 1 s turn: ahead of time
        assert len(turn.frames) == FPS and turn.motion.shape == (FPS, MOTION_DIM)
    d = agent.diagnostics()
    assert d["turns_generated"] == turns and d["turns_skipped"] == 0 and d["player.dropped_frames"] == 0


class GatedGenerator(StreamingGenerator):
    """A real generator whose step waits at a gate the test opens (a generation 'in flight')."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.resets = 0

    def reset(self) -> None:
        self.resets = getattr(self, "resets", 0) + 1
        super().reset()

    def step(self, *a, **kw):
        self.entered.set()
        self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        return super().step(*a, **kw)


def test_stop_with_a_turn_in_flight_then_start_generates_again(model):
    t0 = 50.0
    audio, motion = clip(4)
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    gen = GatedGenerator(model, seed=0)
    agent = make_agent(gen, clock, rec)
    agent.start()
    gen.gate.clear()
    feed(agent, audio, motion, t0, range(0, 1))
    assert gen.entered.wait(10)  # turn 0 is being generated
    stopper = threading.Thread(target=agent.stop)
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive()  # stop waits for the step in progress
    gen.gate.set()
    stopper.join(10)
    assert not stopper.is_alive() and not agent.running
    assert rec.turns == []  # the stopped run published nothing
    resets_before = gen.resets
    # a new run on a new timeline: it must generate (the old bug: the old run's stop sentinel ended it at once)
    agent.start()
    try:
        t1 = 500.0
        clock.t = t1 + 2.0
        feed(agent, audio, motion, t1, range(0, 2))
        wait_for(lambda: len(rec.turns) == 2)
        assert [t.index for t in rec.turns] == [0, 1]
        assert gen.resets == resets_before + 1  # the new run started from a fresh context
        assert rec.turns[0].epoch == agent.assembler.epoch
    finally:
        assert agent.stop()


def test_stamp_jump_mid_turn_starts_a_new_context(model):
    t0 = 10.0
    audio, motion = clip(4)
    clock = ManualClock(t0 + 2.0)
    rec = Recorder(clock)
    gen = GatedGenerator(model, seed=0)
    agent = make_agent(gen, clock, rec, output_delay=1.2, idle_timeout=0.0)
    agent.start()
    try:
        feed(agent, audio, motion, t0, range(0, 2))
        wait_for(lambda: len(rec.turns) == 2)
        advance(clock, t0 + 3.5)
        wait_for(lambda: len(rec.frames) > 0)
        # half of turn 2 arrives, then the stamps jump back 5 s (a bag replayed again)
        for a in range(2 * SAMPLE_RATE, 2 * SAMPLE_RATE + SAMPLE_RATE // 2, CHUNK):
            agent.add_user_audio(t0 + a / SAMPLE_RATE, audio[a : a + CHUNK], SAMPLE_RATE)
        resets = gen.resets
        t1 = t0 - 5.0
        clock.t = t1 + 2.0
        feed(agent, audio, motion, t1, range(0, 2))
        wait_for(lambda: len(rec.turns) == 4)
        new = rec.turns[2:]
        assert [(t.index, t.epoch) for t in new] == [(0, 1), (1, 1)], [(t.index, t.epoch) for t in rec.turns]
        assert gen.resets == resets + 1
        assert agent.assembler.counters.clock_jumps == 1
        advance(clock, t1 + 4.0)
        wait_for(lambda: any(f.stamp > t1 + 1.2 + 1.9 for f in rec.frames))
        new_stamps = [f.stamp for f in rec.frames if f.stamp < t0]
        assert new_stamps == sorted(new_stamps) and len(new_stamps) > 0
    finally:
        agent.stop()


def test_slow_generation_skips_turns_and_counts_them(model):
    t0 = 0.0
    audio, motion = clip(8)
    clock = ManualClock(t0 + 1.0)  # turns come early (no frame is due yet), so none has expired
    rec = Recorder(clock)
    gen = GatedGenerator(model, seed=0)
    agent = make_agent(gen, clock, rec, max_waiting_turns=1)
    agent.start()
    try:
        gen.gate.clear()
        feed(agent, audio, motion, t0, range(0, 1))
        assert gen.entered.wait(10)  # turn 0 is being generated (and stuck)
        feed(agent, audio, motion, t0, range(1, 8))  # 7 more turns become ready meanwhile
        gen.gate.set()
        wait_for(lambda: len(rec.turns) == 8)
        c = agent.counters
        assert c.turns_skipped >= 5 and c.turns_generated == 8 - c.turns_skipped and c.expired_turns == 0
        assert [t.index for t in rec.turns] == list(range(8))  # every turn is published, in order ...
        idx = [t.index for t in rec.turns if not t.filled]  # ... the skipped ones filled
        assert idx[0] == 0 and idx[-2:] == [6, 7]  # the newest turns are generated, the waiting ones skipped
        assert c.filled_turns == c.turns_skipped
        assert agent.degraded()
    finally:
        agent.stop()


def test_bad_input_and_failing_steps_are_counted_and_the_loop_goes_on(model):
    t0 = 0.0
    audio, motion = clip(3)
    clock = ManualClock(t0 + 2.0)  # turn 0's frames are not yet past due
    rec = Recorder(clock)
    errors: list[str] = []
    gen = GatedGenerator(model, seed=0)
    agent = LiveAgent(gen, LiveConfig(), clock=clock, on_turn=rec.on_turn, on_frames=rec.on_frames,
                      on_error=errors.append)
    assert agent.add_user_audio(t0, audio[:CHUNK], SAMPLE_RATE) == "not running"
    agent.start()
    try:
        bad = np.full(CHUNK, np.nan, np.float32)  # nothing to repair: dropped (a few NaN would be set to 0)
        assert "NaN" in agent.add_user_audio(t0, bad, SAMPLE_RATE)
        assert "expected 56" in agent.add_user_motion(t0, np.zeros(12, np.float32))
        assert "multiple of channels" in agent.add_user_audio(t0, audio[:101], SAMPLE_RATE, channels=2)
        assert agent.counters.input_errors == 3
        gen.fail_next = True
        feed(agent, audio, motion, t0, range(0, 3))
        wait_for(lambda: len(rec.turns) == 3)
        assert agent.counters.inference_errors == 1 and "injected failure" in errors[0]
        assert [(t.index, t.filled) for t in rec.turns] == [(0, True), (1, False), (2, False)]
        assert agent.counters.filled_turns == 1 and agent.counters.consecutive_failures == 0
        assert all(np.isfinite(t.motion).all() for t in rec.turns)
    finally:
        agent.stop()


def test_sampling_changes_live_and_is_validated(model):
    gen = StreamingGenerator(model, seed=0)
    agent = LiveAgent(gen, LiveConfig(), clock=ManualClock())
    agent.set_sampling(temperature=0.3, noise_correlation=0.5)
    assert gen.temperature == 0.3 and gen.noise_correlation == 0.5
    with pytest.raises(ValueError, match="temperature"):
        agent.set_sampling(temperature=0.0)
    with pytest.raises(ValueError, match="noise_correlation"):
        agent.set_sampling(noise_correlation=1.0)
    assert gen.temperature == 0.3


def test_inference_threads():
    assert inference_threads(3) == 3
    assert inference_threads(0, cores=8) == 4
    assert inference_threads(0, cores=1) == 1
    with pytest.raises(ValueError):
        inference_threads(-1)
    with pytest.raises(ValueError):
        LiveConfig(output_delay=-1)
