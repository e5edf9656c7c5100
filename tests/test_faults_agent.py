"""Faults inside the agent (issue 13): bad audio, bad stamps and clock jumps, failing inference and slow
generation. The logic is tested pure (sanitize_audio, TurnAssembler, FaultLog, Continuation) and through
LiveAgent with a real model (a tiny random one, and the shipped one where the motion has to be realistic);
the node's lifecycle error after repeated failures runs in-process over DDS (tests/test_faults_dds.py has the
end-to-end run through the agent process).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_live import CHUNK, ManualClock, Recorder, advance, clip, feed, tiny_model, wait_for

from timar_model.eval.boundary import motion_steps
from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE
from timar_model.runtime.faults import Continuation, FaultLog, is_out_of_memory
from timar_model.runtime.live import LiveAgent, LiveConfig
from timar_model.runtime.streaming import StreamingGenerator
from timar_model.runtime.turns import (
    AUDIO_FAULTS,
    AssemblerConfig,
    InputError,
    TurnAssembler,
    hold_then_ease,
    sanitize_audio,
)

SR = SAMPLE_RATE
T0 = 1000.0


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ------------------------------------------------------------------------------------------- bad audio
def tone(seconds: float, rate: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


REPAIRED = [  # (name, data, rate, channels, kinds, check of the mono 16 kHz result)
    ("clean", tone(0.1), SR, 1, [], lambda y: np.allclose(y, tone(0.1))),
    ("nan_inf", np.r_[tone(0.05), [np.nan, np.inf, -np.inf], tone(0.05)[3:]].astype(np.float32), SR, 1,
     ["nonfinite"], lambda y: y.size == 1600 and np.all(y[800:803] == 0)),
    ("huge_values", np.r_[tone(0.05), np.full(800, 3e38, np.float32)], SR, 1, ["clipped"],
     lambda y: np.abs(y).max() <= 1.0 and np.all(y[800:] == 1.0)),
    ("float64_overflow", np.r_[tone(0.05).astype(np.float64), np.full(800, 1e300)], SR, 1, ["nonfinite"],
     lambda y: np.all(y[800:] == 0)),
    ("clipped_and_nan", np.r_[np.full(800, -5.0, np.float32), np.full(800, np.nan, np.float32)], SR, 1,
     ["nonfinite", "clipped"], lambda y: np.all(y[:800] == -1.0) and np.all(y[800:] == 0)),
    ("stereo_48k", np.repeat(tone(0.1, 48000), 2), 48000, 2, ["multichannel"],
     lambda y: y.size == 1600 and np.abs(y[50:-50] - tone(0.1)[50:-50]).max() < 0.02),
    ("odd_rate", tone(0.1, 44099), 44099, 1, [], lambda y: abs(y.size - 1600) <= 1),
    ("lowest_rate", tone(0.1, 8000), 8000, 1, [], lambda y: y.size == 1600),
]
DROPPED = [  # (name, data, rate, channels, kind)
    ("empty", np.zeros(0, np.float32), SR, 1, "empty"),
    ("all_nan", np.full(1600, np.nan, np.float32), SR, 1, "all_nonfinite"),
    ("misaligned", np.zeros(1601, np.float32), SR, 2, "misaligned"),
    ("no_channels", np.zeros(1600, np.float32), SR, 0, "bad_channels"),
    ("rate_zero", np.zeros(1600, np.float32), 0, 1, "bad_rate"),
    ("rate_too_low", np.zeros(1600, np.float32), 100, 1, "bad_rate"),
    ("rate_too_high", np.zeros(1600, np.float32), 10_000_000, 1, "bad_rate"),
    ("huge_message", np.zeros(17 * SR, np.float32), SR, 1, "too_long"),
]


@pytest.mark.parametrize("name,data,rate,channels,kinds,check", REPAIRED, ids=[r[0] for r in REPAIRED])
def test_sanitize_audio_repairs(name, data, rate, channels, kinds, check):
    y, got = sanitize_audio(data, rate, channels, max_seconds=16)
    assert got == kinds and y.dtype == np.float32 and np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert check(y)


@pytest.mark.parametrize("name,data,rate,channels,kind", DROPPED, ids=[d[0] for d in DROPPED])
def test_sanitize_audio_drops(name, data, rate, channels, kind):
    with pytest.raises(InputError) as e:
        sanitize_audio(data, rate, channels, max_seconds=16)
    assert e.value.kind == kind and kind in AUDIO_FAULTS


def test_assembler_counts_audio_faults_per_stream_and_kind_and_notes_them():
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False))
    notes = []
    asm.on_note = lambda kind, text: notes.append((kind, text))
    x = tone(1.0)
    # user audio: 10 chunks, rates 16k / 48k stereo alternating (rate changes), one with NaN, one clipped
    for c in range(10):
        a = x[c * 1600:(c + 1) * 1600].copy()
        if c == 2:
            a[10] = np.nan
        if c == 4:
            a[:100] = 7.0
        if c % 2:
            asm.add_user_audio(T0 + c / 10, np.repeat(tone(0.1, 48000), 2), 48000, 2)
        else:
            asm.add_user_audio(T0 + c / 10, a, SR, 1)
    for bad in (np.zeros(0, np.float32), np.full(160, np.nan, np.float32)):
        with pytest.raises(InputError):
            asm.add_user_audio(T0 + 0.5, bad, SR, 1)
    with pytest.raises(InputError):
        asm.add_agent_audio(T0, np.zeros(3, np.float32), SR, 2)
    asm.add_agent_audio(T0, np.r_[np.full(10, np.inf, np.float32), tone(0.5)], SR, 1)
    f = asm.audio_faults_dict()
    assert f["user.multichannel"] == 5 and f["user.rate_changed"] == 9 and f["user.empty"] == 1
    assert f["user.all_nonfinite"] == 1 and f["agent.misaligned"] == 1 and f["agent.nonfinite"] == 1
    assert f["user.nonfinite"] == 1 and f["user.clipped"] == 1 and f["user.bad_rate"] == 0
    assert asm.counters.rejected == 3 and asm.counters.resampled_chunks == 5
    (turn,) = asm.poll()
    assert turn.stats.user_audio_missing == 0 and np.isfinite(turn.user_speech).all()
    kinds = [k for k, _ in notes]
    assert {"user_audio.multichannel", "user_audio.rate_changed", "user_audio.empty", "user_audio.all_nonfinite",
            "agent_audio.misaligned", "agent_audio.nonfinite"} <= set(kinds)
    assert any("48000" in t and "16000" in t for k, t in notes if k == "user_audio.rate_changed")


def test_fault_log_reports_the_first_then_once_per_period_with_the_count():
    now = [0.0]
    log = FaultLog(period=10.0, clock=lambda: now[0])
    lines = []
    for i in range(100):  # 10 a second for 10 s, two kinds
        now[0] = i / 10
        lines += [line for line in (log.note("nan", "NaN set to 0"), log.note("rate", "rate changed")) if line]
    assert lines == ["NaN set to 0", "rate changed"]
    now[0] = 10.05
    assert log.note("nan", "NaN set to 0") == "NaN set to 0 (100 in the last 10 s, 101 in all)"
    assert log.note("nan", "NaN set to 0") is None and log.total("nan") == 102 and log.total("other") == 0


# ------------------------------------------------------------------------------------------- stamps
def stream(asm: TurnAssembler, t_first: float, turns: int, audio_from: int = 0, chunk: int = 1600) -> None:
    """User audio (0.1 s chunks) and motion (25 fps) of `turns` turns, interleaved in time order."""
    x = tone(turns + audio_from)
    for k in range(turns):
        for c in range(SR // chunk):
            s0 = (k * SR) + c * chunk
            asm.add_user_audio(t_first + s0 / SR, x[audio_from * SR + s0: audio_from * SR + s0 + chunk])
            for f in range(k * FPS + c * FPS * chunk // SR, k * FPS + (c + 1) * FPS * chunk // SR):
                asm.add_user_motion(t_first + f / FPS, np.full(MOTION_DIM, 0.01 * f, np.float32))


@pytest.mark.parametrize("offset", [3600.0, -86400.0, 1e9])
def test_a_single_far_future_or_far_past_stamp_is_an_outlier_not_a_reset(offset):
    asm = TurnAssembler()
    notes = []
    asm.on_note = lambda kind, text: notes.append(kind)
    stream(asm, T0, 2)
    asm.add_user_audio(T0 + offset, tone(0.1))  # one chunk stamped far away ...
    asm.add_user_audio(T0 + 2.0, tone(0.1))  # ... and the stream goes on: it was an outlier
    asm.add_user_motion(T0 + 2.0 - offset, np.zeros(MOTION_DIM, np.float32))  # one motion frame, the other way
    asm.add_user_motion(T0 + 2.0, np.zeros(MOTION_DIM, np.float32))
    turns = asm.poll()
    assert asm.epoch == 0 and asm.counters.clock_jumps == 0 and asm.counters.outlier_stamps == 2
    assert [t.index for t in turns] == [0, 1] and asm.origin == T0
    assert notes.count("outlier_stamp") == 2 and "clock_jump" not in notes


@pytest.mark.parametrize("jump", [-5.0, 3600.0])
def test_a_confirmed_jump_resets_once_and_in_flight_old_messages_are_dropped(jump):
    """A bag replayed again (-5 s) or sim time restarted (+1 h): the jump is confirmed by the second message
    of the new timeline, the timeline starts there, and messages of the old timeline still in flight (a motion
    frame, an audio chunk) neither reset it again nor land in its buffers."""
    asm = TurnAssembler()
    stream(asm, T0, 3)
    old = asm.poll()
    assert [t.index for t in old] == [0, 1, 2]
    t1 = T0 + 3.0 + jump
    asm.add_user_audio(t1, tone(0.1))
    asm.add_user_audio(t1 + 0.1, tone(0.1))
    assert asm.epoch == 1 and asm.counters.clock_jumps == 1 and asm.origin == t1
    asm.add_user_motion(T0 + 3.0, np.zeros(MOTION_DIM, np.float32))  # still in flight from the old timeline
    asm.add_user_audio(T0 + 3.1, tone(0.1))
    stream(asm, t1, 3)  # the new timeline, in full (its first two chunks again: overlaps)
    turns = asm.poll()
    assert asm.epoch == 1 and asm.counters.clock_jumps == 1 and asm.counters.outlier_stamps == 2
    assert [(t.index, t.epoch) for t in turns] == [(0, 1), (1, 1), (2, 1)]
    assert turns[0].start_time == t1 and all(t.stats.user_motion_missing == 0 for t in turns)
    np.testing.assert_allclose(turns[1].user_motion[:, 0], 0.01 * np.arange(25, 50), atol=1e-6)  # no old frame


def test_duplicates_and_reordering_give_the_same_turns_as_a_clean_stream():
    clean, messy = TurnAssembler(), TurnAssembler()
    stream(clean, T0, 3)
    events = []
    messy_add = {"a": messy.add_user_audio, "m": messy.add_user_motion}
    x = tone(3)
    for c in range(30):
        events.append(("a", T0 + c / 10, x[c * 1600:(c + 1) * 1600]))
    for f in range(75):
        events.append(("m", T0 + f / FPS, np.full(MOTION_DIM, 0.01 * f, np.float32)))
    events.sort(key=lambda e: e[1])
    rng = np.random.default_rng(0)
    order = []
    for e in events:  # every message once or twice, neighbours swapped now and then
        order.append(e)
        if rng.random() < 0.2:
            order.append(e)
    for i in range(0, len(order) - 1, 7):
        order[i], order[i + 1] = order[i + 1], order[i]
    for kind, stamp, payload in order:
        messy_add[kind](stamp, payload)
    a, b = clean.poll(), messy.poll()
    assert [t.index for t in a] == [t.index for t in b] == [0, 1, 2]
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(ta.user_speech, tb.user_speech)
        np.testing.assert_array_equal(ta.user_motion, tb.user_motion)
    c = messy.counters
    assert c.overlaps > 0 and c.out_of_order > 0 and c.clock_jumps == 0 and c.outlier_stamps == 0


# ------------------------------------------------------------------------------------------- continuation
def test_continuation_holds_then_eases_with_the_lost_motion_easing_and_joins_smoothly():
    c = Continuation(MOTION_DIM, hold=25, ease=25)
    np.testing.assert_array_equal(c.fill(25), np.zeros((25, MOTION_DIM)))  # nothing shown yet: neutral
    rng = np.random.default_rng(0)
    gen = np.cumsum(0.01 * rng.standard_normal((25, MOTION_DIM)), axis=0).astype(np.float32) + 0.5
    j = c.join(gen)  # after the fill: from the neutral frame onto the generated motion, within the turn
    assert np.abs(j[0]).max() <= np.abs(gen[0]).max() / 25 + 1e-6
    np.testing.assert_allclose(j[-1], gen[-1], atol=1e-6)
    assert np.array_equal(c.join(gen), gen)  # a generated turn after a generated one is untouched
    a, b = c.fill(25), c.fill(25)  # two turns lost: held for 25 frames, then eased to neutral over 25
    np.testing.assert_allclose(np.vstack([a, b]), hold_then_ease(gen[-1], np.arange(1, 51), 25, 25), atol=1e-6)
    assert np.all(b[-1] == 0)
    gen2 = gen[::-1].copy() + 1.0
    j = c.join(gen2)
    steps = np.abs(np.diff(np.vstack([b[-1:], j]), axis=0))
    bound = np.abs(np.diff(np.vstack([gen2[:1], gen2]), axis=0)) + np.abs(gen2[0] - b[-1]) / 25 + 1e-6
    assert np.all(steps <= bound)  # each step: the generated one plus 1/25 of the offset at most
    np.testing.assert_allclose(j[-1], gen2[-1], atol=1e-6)  # on the generated motion by the turn's end


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# ------------------------------------------------------------------------------------------- LiveAgent
def make_live(gen, clock, rec, **cfg) -> tuple[LiveAgent, dict[str, list[str]]]:
    logs: dict[str, list[str]] = {"warning": [], "error": [], "fatal": []}
    cfg.setdefault("expect_agent_audio", False)
    agent = LiveAgent(gen, LiveConfig(**cfg), clock=clock, on_turn=rec.on_turn, on_frames=rec.on_frames,
                      on_warning=logs["warning"].append, on_error=logs["error"].append,
                      on_fatal=logs["fatal"].append)
    return agent, logs


def test_bad_audio_keeps_the_agent_running_with_finite_output_counted_and_reported_once_per_kind(model):
    t0, turns = 0.0, 4
    audio, motion = clip(turns)
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    agent, logs = make_live(StreamingGenerator(model, seed=0), clock, rec, warning_period=3600.0,
                            output_delay=1.5, idle_timeout=0.0)
    agent.start()
    try:
        dropped = 0
        for k in range(turns):
            for c in range(10):
                a = k * SR + c * CHUNK
                stamp, x = t0 + a / SR, audio[a:a + CHUNK].copy()
                kind = (k * 10 + c) % 5
                if kind == 1:
                    x[::7] = np.nan  # repaired: set to 0
                elif kind == 2:
                    x[:50] = 1e30  # repaired: clipped
                if kind == 3:  # stereo at 48 kHz: downmixed and resampled (the rate changes twice)
                    up = np.interp(np.arange(3 * CHUNK) / 3, np.arange(CHUNK), x).astype(np.float32)
                    assert agent.add_user_audio(stamp, np.repeat(up, 2), 48000, 2) is None
                else:
                    assert agent.add_user_audio(stamp, x, SR) is None
                bad = [(np.zeros(0, np.float32), SR, 1), (np.full(CHUNK, np.nan, np.float32), SR, 1),
                       (np.zeros(CHUNK + 1, np.float32), SR, 2), (np.zeros(CHUNK, np.float32), 1, 1),
                       (np.zeros(20 * SR, np.float32), SR, 1)][(2 * k + (c == 5)) % 5]
                if c in (0, 5):  # and a dropped chunk now and then
                    assert agent.add_user_audio(stamp, *bad) is not None
                    dropped += 1
                assert agent.add_agent_audio(stamp, np.full(CHUNK, np.inf, np.float32), SR) is not None
                dropped += 1
            for f in range(k * FPS, (k + 1) * FPS):
                assert agent.add_user_motion(t0 + f / FPS, motion[f]) is None
            wait_for(lambda k=k: len(rec.turns) == k + 1)
        advance(clock, t0 + turns + 1.6)
        wait_for(lambda: len(rec.frames) == turns * FPS)
    finally:
        assert agent.stop()
    assert all(not t.filled and np.isfinite(t.motion).all() for t in rec.turns)
    assert np.isfinite(np.stack([f.motion for f in rec.frames])).all()
    d = agent.diagnostics()
    assert d["turns_generated"] == turns and d["input_errors"] == dropped and d["inference_errors"] == 0
    assert d["assembler.gaps"] == 0  # every repaired chunk filled its place: no silence was invented
    assert d["audio_faults.user.nonfinite"] == 8 and d["audio_faults.user.clipped"] == 8
    assert d["audio_faults.user.multichannel"] == 8 and d["audio_faults.user.rate_changed"] == 16
    assert d["audio_faults.agent.all_nonfinite"] == turns * 10
    for kind in ("empty", "all_nonfinite", "misaligned", "bad_rate", "too_long"):
        assert d[f"audio_faults.user.{kind}"] > 0
    # each kind of fault once in the log (the rest within warning_period is counted, not printed): 9 kinds on
    # user/audio, 1 on agent/audio
    assert len(logs["warning"]) == 10, logs["warning"]
    assert any("NaN/Inf samples set to 0" in w for w in logs["warning"])
    assert any("sample rate changed" in w for w in logs["warning"])


def feed_turns(agent, audio, motion, base: float, turns: range, clock: ManualClock | None = None) -> None:
    for k in turns:
        if clock is not None:
            clock.t = max(clock.t, base + k + 1.0)  # the clock at the end of the turn's data, as live
        feed(agent, audio, motion, base, range(k, k + 1))


@pytest.mark.parametrize("jump", [-5.0, 3600.0])
def test_clock_and_stamps_jump_together_fresh_turns_soon_and_no_burst_of_old_ones(model, jump):
    """Sim time restarted or a bag replayed on sim time: the clock and the stamps jump together by `jump`.
    The timeline starts again within the first turns of new data, no turn of the old timeline is generated after
    the jump, and no turn is handed out whose frames are past due."""
    t0, n_old, n_new = 100.0, 4, 4
    audio, motion = clip(n_old + n_new)
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    agent, logs = make_live(StreamingGenerator(model, seed=0), clock, rec, output_delay=1.25)
    agent.start()
    try:
        for k in range(n_old):
            feed_turns(agent, audio, motion, t0, range(k, k + 1), clock)
            wait_for(lambda k=k: len(rec.turns) == k + 1)
            advance(clock, t0 + k + 1.9)
        before, frames_before = len(rec.turns), len(rec.frames)
        base = t0 + jump  # turn k of the clip now starts at base + k
        clock.t = base + n_old + 0.3  # the jump: the clock moved with the stamps
        for k in range(n_old, n_old + n_new):
            feed_turns(agent, audio, motion, base, range(k, k + 1), clock)
            wait_for(lambda k=k: any(t.epoch > 0 and t.start_time == pytest.approx(base + k)
                                     for t in rec.turns[before:]))
            advance(clock, base + k + 1.9)
    finally:
        agent.stop()
    after = list(zip(rec.turns[before:], rec.turn_times[before:]))
    assert all(t.epoch > 0 for t, _ in after), [(t.index, t.epoch) for t, _ in after]  # no old turn after it
    fresh = [t for t, _ in after]
    assert fresh and fresh[0].start_time == pytest.approx(base + n_old)  # the first turn of new data
    assert len(fresh) == n_new and not any(t.filled for t in fresh)
    for t, handed_at in after:
        assert t.frames[-1].stamp >= handed_at  # not one turn whose frames were all past due
    c = agent.counters
    assert c.resets == 1 and c.clock_resyncs + agent.assembler.counters.clock_jumps == 1
    assert c.expired_turns == 0 and c.early_turns == 0
    new_frames = [f.stamp for f in rec.frames[frames_before:]]  # released after the jump: new timeline only
    assert new_frames == sorted(new_frames) and len(new_frames) > 0
    assert min(new_frames) >= base + n_old + 1.25 - 1e-9
    assert any("jump" in w for w in logs["warning"])


@pytest.mark.parametrize("offset", [-5.0, 3600.0])
def test_stamps_off_the_clock_are_dropped_not_generated_and_reported(model, offset):
    """A bag replayed with its recorded stamps while the agent runs on the wall clock (no use_sim_time): the
    turns' frames would all be past due (stamps behind) or due in an hour (stamps ahead). None is generated or
    queued; each is counted and the log says why."""
    t0 = 50.0
    audio, motion = clip(4)
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    agent, logs = make_live(StreamingGenerator(model, seed=0), clock, rec, idle_timeout=0.0)
    agent.start()
    try:
        feed_turns(agent, audio, motion, t0 + offset, range(4))
        wait_for(lambda: agent.counters.expired_turns + agent.counters.early_turns == 4)
    finally:
        agent.stop()
    assert rec.turns == [] and agent.counters.turns_generated == 0 and agent.player.queued == 0
    assert any("use_sim_time" in w for w in logs["warning"])
    assert (agent.counters.expired_turns if offset < 0 else agent.counters.early_turns) == 4


class FaultyGenerator(StreamingGenerator):
    """A real generator whose step fails on chosen calls (exceptions, out of memory, NaN output), or waits at a
    gate the test opens."""

    def __init__(self, *a, faults: dict[int, str] | None = None, gate_at: int | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.faults = faults or {}
        self.gate_at = gate_at
        self.calls = 0
        self.resets_seen = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def reset(self) -> None:
        self.resets_seen = getattr(self, "resets_seen", 0) + 1
        super().reset()

    def step(self, *a, **kw):
        n, self.calls = self.calls, self.calls + 1
        if n == self.gate_at:
            self.entered.set()
            self.gate.wait(30)
        fault = self.faults.get(n)
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if fault == "runtime_oom":
            raise RuntimeError("CUDA error: out of memory")
        if fault == "error":
            raise ValueError("injected")
        out = super().step(*a, **kw)
        if fault == "nan":
            out[3, 7] = np.nan
        return out


def test_failed_inference_is_filled_tried_again_and_fatal_after_max_failures(model):
    t0 = 0.0
    audio, motion = clip(10)
    clock = ManualClock(t0 + 1.0)
    rec = Recorder(clock)
    # turn 1 out of memory, 2 fine again, then 3.. fail every way: the 3rd failure in a row (turn 5) is fatal
    gen = FaultyGenerator(model, seed=0, faults={1: "oom", 3: "nan", 4: "runtime_oom", 5: "error", 6: "error"})
    agent, logs = make_live(gen, clock, rec, max_inference_failures=3)
    agent.start()
    try:
        for k in range(8):
            feed_turns(agent, audio, motion, t0, range(k, k + 1))
            wait_for(lambda k=k: len(rec.turns) == k + 1)
    finally:
        agent.stop()
    assert [t.filled for t in rec.turns] == [False, True, False, True, True, True, True, True]
    assert gen.calls == 6  # after the fatal failure (turn 5) no step is tried: turns 6, 7 are filled
    assert all(np.isfinite(t.motion).all() for t in rec.turns)
    c = agent.counters
    assert c.inference_errors == 4 and c.out_of_memory == 2 and c.filled_turns == 6 and c.turns_generated == 2
    assert len(logs["fatal"]) == 1 and "3 turns in a row" in logs["fatal"][0] and agent.fatal == logs["fatal"][0]
    assert any("out of memory for turn 1" in e for e in logs["error"])
    assert any("NaN/Inf" in e for e in logs["error"])
    assert gen.resets_seen == 4  # a fresh context after every failure
    # the fill holds the last output frame: turn 1 starts where turn 0 ended
    np.testing.assert_allclose(rec.turns[1].motion[0], rec.turns[0].motion[-1])
    assert agent.degraded()
    agent.start()  # a new run (the node's configure + activate): tried again
    try:
        assert agent.fatal is None and agent.counters.consecutive_failures == 0
    finally:
        agent.stop()


SHIPPED = "models/timar-small-synth"


def speech_like(seconds: int, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of shaped noise with pauses: enough for the model to nod and talk."""
    rng = np.random.default_rng(seed)
    n = seconds * SR
    t = np.arange(n) / SR
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.3)
    return (0.2 * env * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.slow
def test_output_is_continuous_across_skipped_and_failed_turns(project_root):
    """The shipped model; turn 2 fails, turn 4 is stuck while 5..8 wait (5 and 6 are skipped). The frames the
    agent publishes never step further across a filled turn (its edges and inside it) than the largest step
    inside the turns the model generated on its own."""
    torch.manual_seed(0)
    turns = 9
    user = speech_like(turns)
    gen = FaultyGenerator.from_pretrained(project_root / SHIPPED, dtype="float32", seed=0)
    gen.faults, gen.gate_at = {2: "error"}, 4
    t0 = 0.0
    clock = ManualClock(t0 + 1.0)  # the turns come early: skipped ones are filled, not expired
    rec = Recorder(clock)
    agent, _ = make_live(gen, clock, rec, max_waiting_turns=1, expect_user_motion=False)
    agent.start()
    try:
        for k in range(turns):
            for a in range(k * SR, (k + 1) * SR, CHUNK):
                agent.add_user_audio(t0 + a / SR, user[a:a + CHUNK], SR)
            if k == 4:
                assert gen.entered.wait(60)
            elif k < 4:
                wait_for(lambda k=k: len(rec.turns) == k + 1, timeout=120)
        gen.gate.set()
        wait_for(lambda: len(rec.turns) == turns, timeout=120)
    finally:
        agent.stop()
    filled = [t.filled for t in rec.turns]
    assert filled == [False, False, True, False, False, True, True, False, False], filled
    frames = np.concatenate([t.motion for t in rec.turns])  # what the agent publishes, frame by frame
    steps = motion_steps(frames)
    inside_gen = np.zeros(frames.shape[0] - 1, bool)  # steps inside generated turns (the joined ones too)
    at_fill = np.zeros(frames.shape[0] - 1, bool)  # steps inside filled turns, and into and out of them
    for k in range(turns):
        inside = np.arange(k * FPS, (k + 1) * FPS - 1)
        (at_fill if filled[k] else inside_gen)[inside] = True
        if k > 0 and (filled[k] or filled[k - 1]):
            at_fill[k * FPS - 1] = True
    assert inside_gen.sum() == 24 * 6 and at_fill.sum() == 24 * 3 + 5  # turns 0 1 3 4 7 8 | 2 5 6, 5 edges
    report = {}
    for part, st in steps.items():
        own, fill = float(st[inside_gen].max()), float(st[at_fill].max())
        report[part] = (round(own, 4), round(fill, 4))
        assert fill <= own, (part, own, fill)
    print("largest step inside generated turns vs inside/into/out of filled turns:", report)
    assert np.isfinite(frames).all()
