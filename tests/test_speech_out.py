"""The robot's speech scheduler (timar_model.runtime.speech_out) on a fake clock: queue order, contiguity,
the lookahead bound, cancel at a chunk boundary, status transitions and counters; and the speaker's playout
buffer. No ROS, no audio device."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timar_model.runtime.speech_out import (
    MAX_LOOKAHEAD,
    STATES,
    ClockOffset,
    Playout,
    QueueFull,
    SpeechChunk,
    SpeechOut,
    SpeechOutConfig,
)
from timar_model.runtime.turns import OUTPUT_DELAY, AssemblerConfig
from timar_model.tts import Speech

SR = 16000


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTTS:
    """Text -> a recognisable ramp: 'n:<samples>' gives that many samples, anything else 100 per character.
    Each utterance's samples are distinct (a counter in the value) so a test can tell them apart."""

    def __init__(self, rate: int = SR, fail_on: str | None = None, clock: Clock | None = None,
                 seconds: float = 0.0) -> None:
        self.rate, self.fail_on, self.calls = rate, fail_on, []
        self.clock, self.seconds = clock, seconds  # a synthesis advances the fake clock this much

    def audio(self, text: str) -> np.ndarray:
        n = int(text[2:]) if text.startswith("n:") else 100 * len(text)
        return (0.5 * np.sin(np.arange(n) * 0.01 + len(text))).astype(np.float32)

    def synthesize(self, text: str) -> Speech:
        self.calls.append(text)
        if self.clock is not None:
            self.clock.t += self.seconds
        if text == self.fail_on:
            raise RuntimeError("synthesiser broke")
        return Speech(self.audio(text), self.rate)


def make(chunk: int = 1600, lookahead: float = 0.3, delay: float = OUTPUT_DELAY, t0: float = 1000.0, **kw):
    clock = Clock(t0)
    tts = FakeTTS(clock=clock, **kw)
    out = SpeechOut(tts, SpeechOutConfig(chunk_samples=chunk, lookahead=lookahead, output_delay=delay), clock)
    return out, clock, tts


def run_until(out: SpeechOut, clock: Clock, t_end: float, dt: float = 0.01) -> list[SpeechChunk]:
    """Poll every dt s up to t_end, checking the lookahead bound at each poll."""
    chunks = []
    while clock.t < t_end:
        clock.t += dt
        new = out.poll()
        for c in new:
            assert c.stamp <= clock.t + out.config.lookahead + 1e-9
        chunks += new
    return chunks


def by_utterance(chunks: list[SpeechChunk]) -> dict[int, list[SpeechChunk]]:
    d: dict[int, list[SpeechChunk]] = {}
    for c in chunks:
        d.setdefault(c.utterance, []).append(c)
    return d


def assert_contiguous(chunks: list[SpeechChunk]) -> None:
    """No gap and no overlap; chunk indices count up within an utterance."""
    for a, b in zip(chunks, chunks[1:]):
        assert b.first_sample == a.end_sample, (a.first_sample, a.end_sample, b.first_sample)
        assert b.index == (a.index + 1 if b.utterance == a.utterance else 0)


# ----------------------------------------------------------------------------- config
def test_config_bounds_and_defaults():
    cfg = SpeechOutConfig()
    assert cfg.chunk_samples == 1600 and cfg.lookahead == 0.3 and cfg.output_delay == OUTPUT_DELAY
    assert cfg.cancel_reaction == pytest.approx(0.3 + 0.1 + OUTPUT_DELAY)
    # released audio stays far inside the assembler's buffer of future agent audio
    asm = AssemblerConfig()
    assert MAX_LOOKAHEAD <= asm.max_buffered_turns * asm.turn_seconds / 8
    for bad in (dict(lookahead=-0.1), dict(lookahead=MAX_LOOKAHEAD + 0.01), dict(chunk_samples=0),
                dict(output_delay=-1.0), dict(max_queued=0)):
        with pytest.raises(ValueError):
            SpeechOutConfig(**bad)


# ----------------------------------------------------------------------------- order, contiguity, lookahead
def test_queue_order_contiguity_and_content():
    out, clock, tts = make()
    ids = [out.say(f"n:{n}") for n in (4000, 1600, 3333)]
    clock.t += 0.2
    while out.synthesize_next():
        pass
    assert tts.calls == ["n:4000", "n:1600", "n:3333"]  # synthesised in the order said
    chunks = run_until(out, clock, clock.t + 3.0)
    per = by_utterance(chunks)
    assert list(per) == ids
    # the first starts when its synthesis was done (on the sample grid); each next one exactly at the previous end
    assert per[ids[0]][0].first_sample == int(np.ceil(1000.2 * SR - 1e-6))
    for a, b in zip(ids, ids[1:]):
        assert per[b][0].first_sample == per[a][-1].end_sample
    assert_contiguous(chunks)  # one contiguous stream across the three
    for uid, n in zip(ids, (4000, 1600, 3333)):
        got = np.concatenate([c.samples for c in per[uid]])
        np.testing.assert_array_equal(got, tts.audio(f"n:{n}"))
        assert all(c.samples.size == 1600 for c in per[uid][:-1]) and per[uid][-1].last
        assert not any(c.last for c in per[uid][:-1])


def test_next_utterance_starts_after_synthesis_when_the_previous_has_ended():
    out, clock, _ = make()
    a = out.say("n:1600")
    out.synthesize_next()
    run_until(out, clock, clock.t + 1.0)
    b = out.say("n:800")
    clock.t += 0.137  # synthesis took this long
    out.synthesize_next()
    sb = out.status(b)
    assert sb.start_sample == int(np.ceil(clock.t * SR - 1e-6))
    assert sb.start_sample > out.status(a).start_sample + 1600


def test_lookahead_releases_exactly_what_is_due():
    out, clock, _ = make(chunk=800, lookahead=0.25)
    uid = out.say("n:16000")
    out.synthesize_next()
    start = out.status(uid).start
    for _ in range(150):
        clock.t += 0.0073
        out.poll()
        u = out.status(uid)
        # released = every chunk whose stamp <= now + lookahead, none beyond
        due = min(16000, (int(np.floor((clock.t + 0.25 - start) * SR / 800 + 1e-9)) + 1) * 800)
        assert u.released == due, (clock.t - start, u.released, due)


def test_stamps_lie_exactly_on_the_sample_grid():
    out, clock, _ = make(t0=1_796_000_000.123456789)  # today's epoch time: a float stamp is only good to 0.2 us
    out.say("n:16000")
    out.synthesize_next()
    chunks = run_until(out, clock, clock.t + 2.0)
    assert all(c.stamp_ns == c.first_sample * 62_500 for c in chunks)  # 1e9 / 16000 ns per sample
    assert all(b.stamp_ns - a.stamp_ns == 1600 * 62_500 for a, b in zip(chunks, chunks[1:]))


def test_lookahead_zero_releases_at_the_stamp():
    out, clock, _ = make(lookahead=0.0)
    uid = out.say("n:4800")
    out.synthesize_next()
    first = out.poll()
    assert [c.index for c in first] == [0]  # stamp == now: due
    clock.t += 0.0999
    assert out.poll() == []
    clock.t += 0.0002
    assert [c.index for c in out.poll()] == [1]
    assert out.status(uid).released == 3200


# ----------------------------------------------------------------------------- cancel
def test_cancel_ends_at_a_chunk_boundary_and_keeps_the_released_part():
    out, clock, tts = make()
    a = out.say("n:16000")
    b = out.say("n:3200")
    out.synthesize_next()
    out.synthesize_next()
    released = run_until(out, clock, clock.t + 0.45)
    k = len(released)
    assert 0 < k < 10 and all(c.utterance == a for c in released)
    cancelled = out.cancel(reason="stop request")
    assert cancelled == [a, b]
    later = run_until(out, clock, clock.t + 3.0)
    assert later == []  # nothing new is released
    ua = out.status(a)
    assert ua.state == "cancelled" and ua.reason == "stop request"
    assert ua.samples == ua.released == k * 1600  # a chunk boundary
    np.testing.assert_array_equal(np.concatenate([c.samples for c in released]), tts.audio("n:16000")[:k * 1600])
    assert out.status(b).state == "cancelled" and out.status(b).released == 0 and out.status(b).latency is None
    assert out.counters.samples_cancelled == 16000 - k * 1600 + 3200
    # the next utterance follows what was released, never overlapping it
    c = out.say("n:1600")
    out.synthesize_next()
    assert out.status(c).start_sample >= released[-1].end_sample


def test_next_utterance_after_a_cancel_does_not_overlap_what_is_still_playing():
    out, clock, _ = make(lookahead=1.0)  # a long lookahead: released audio reaches ahead of the cancel
    a = out.say("n:32000")
    out.synthesize_next()
    released = out.poll()  # chunks up to now + 1 s
    assert released[-1].stamp > clock.t + 0.8
    out.cancel()
    c = out.say("n:1600")
    out.synthesize_next()  # synthesised right away: the released part of a has not been played yet
    assert out.status(c).start_sample == released[-1].end_sample
    assert out.status(a).end == pytest.approx(released[-1].end_sample / SR)


def test_empty_text_cancels():
    out, clock, _ = make()
    a = out.say("n:16000")
    out.synthesize_next()
    run_until(out, clock, clock.t + 0.2)
    assert out.say("   ") is None
    u = out.status(a)
    assert u.state == "cancelled" and u.reason == "empty text" and u.released % 1600 == 0


def test_cancel_while_synthesising_discards_the_result():
    gate, entered = threading.Event(), threading.Event()

    class SlowTTS(FakeTTS):
        def synthesize(self, text):
            entered.set()
            gate.wait(5.0)
            return super().synthesize(text)

    clock = Clock()
    out = SpeechOut(SlowTTS(), SpeechOutConfig(), clock)
    out.start()
    try:
        uid = out.say("n:8000")
        assert entered.wait(5.0)
        assert out.status(uid).state == "synthesizing"
        out.cancel()
        gate.set()
        for _ in range(200):
            if out.status(uid).synthesized is not None:
                break
            time.sleep(0.01)
    finally:
        assert out.stop()
    u = out.status(uid)
    assert u.state == "cancelled" and u.start_sample is None
    assert out.poll(clock.t + 5.0) == [] and not out.busy


def test_a_fully_released_utterance_is_not_cancelled():
    out, clock, _ = make(lookahead=0.5)
    a = out.say("n:1600")
    out.synthesize_next()
    assert len(out.poll()) == 1
    assert out.cancel() == []
    run_until(out, clock, clock.t + 2.0)
    assert out.status(a).state == "done"


# ----------------------------------------------------------------------------- status, latency, speaking
def test_status_transitions_latency_and_counters():
    out, clock, _ = make(delay=1.0, seconds=0.05)  # each synthesis takes 0.05 s
    t_say = clock.t
    a = out.say("n:3200")
    b = out.say("n:1600")
    out.synthesize_next()
    clock.t += 0.02
    out.synthesize_next()
    run_until(out, clock, clock.t + 3.0)
    states: dict[int, list[str]] = {}
    for u in out.pop_changes():
        states.setdefault(u.id, []).append(u.state)
    assert states[a] == ["queued", "synthesizing", "playing", "done"] == [s for s in STATES if s in states[a]]
    assert states[b] == ["queued", "synthesizing", "playing", "done"]
    assert out.pop_changes() == []
    ua, ub = out.status(a), out.status(b)
    assert ua.synthesis_seconds == pytest.approx(0.05) and ua.latency == pytest.approx(0.05 + 1.0, abs=1 / SR)
    # b waited for a: latency = synthesis + wait + output delay = a's end + delay - say
    assert ub.start == pytest.approx(ua.end) and ub.latency == pytest.approx(ua.end + 1.0 - t_say)
    assert ua.finished == pytest.approx(ua.end + 1.0, abs=0.011)  # done once its last sample left the speaker
    c = out.counters_dict()
    assert (c["said"], c["synthesized"], c["done"], c["cancelled"], c["failed"]) == (2, 2, 2, 0, 0)
    assert c["chunks"] == 3 and c["samples_released"] == 4800 and c["late_chunks"] == 0
    assert c["pending"] == 0 and c["playing"] == 0


def test_speaking_follows_the_speaker_not_the_release():
    out, clock, _ = make(delay=1.0)
    a = out.say("n:8000")
    b = out.say("n:8000")
    out.synthesize_next()
    out.synthesize_next()
    start, end = out.status(a).start, out.status(b).end
    assert not out.speaking()
    seen = []
    while clock.t < end + 1.5:
        clock.t += 0.01
        out.poll()
        seen.append((clock.t, out.speaking()))
    on = [t for t, s in seen if s]
    assert on[0] == pytest.approx(start + 1.0, abs=0.011) and on[-1] == pytest.approx(end + 1.0, abs=0.011)
    # back to back: one stretch, no drop between the utterances
    assert all(s for t, s in seen if on[0] <= t <= on[-1])


def test_failed_synthesis_does_not_stop_the_queue():
    out, clock, _ = make(fail_on="n:100")
    a = out.say("n:100")
    b = out.say("n:1600")
    out.synthesize_next()
    out.synthesize_next()
    assert out.status(a).state == "failed" and "synthesiser broke" in out.status(a).reason
    chunks = run_until(out, clock, clock.t + 2.0)
    assert [c.utterance for c in chunks] == [b] and out.status(b).state == "done"
    assert out.counters.failed == 1


def test_queue_full_is_refused_with_a_reason():
    out = SpeechOut(FakeTTS(), SpeechOutConfig(max_queued=2), Clock())
    out.say("a")
    out.say("b")
    with pytest.raises(QueueFull, match="max_queued"):
        out.say("c")
    assert out.counters.refused == 1


def test_other_sample_rates_are_resampled():
    out, clock, _ = make(rate=22050)
    uid = out.say("n:22050")
    out.synthesize_next()
    assert out.status(uid).samples == 16000


def test_worker_thread_synthesises_in_order():
    clock = Clock()
    tts = FakeTTS()
    out = SpeechOut(tts, SpeechOutConfig(), clock)
    out.start()
    try:
        ids = [out.say(f"n:{n}") for n in (1600, 3200, 4800)]
        deadline = time.monotonic() + 10.0
        while any(out.status(i).state != "playing" for i in ids) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        assert out.stop()
    assert tts.calls == ["n:1600", "n:3200", "n:4800"]
    starts = [out.status(i).start_sample for i in ids]
    assert starts[1] == starts[0] + 1600 and starts[2] == starts[1] + 3200


def test_with_espeak():
    pytest.importorskip("espeakng_loader")
    from timar_model.tts import EspeakTTS

    tts = EspeakTTS()
    clock = Clock()
    out = SpeechOut(tts, SpeechOutConfig(), clock)
    uid = out.say("Hello, I am the robot.")
    out.synthesize_next()
    chunks = run_until(out, clock, clock.t + 4.0)
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.size == out.status(uid).samples > 8000 and np.abs(audio).max() > 0.05
    assert_contiguous(chunks)


# ----------------------------------------------------------------------------- property-based
@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9000), min_size=1, max_size=5),
    chunk=st.integers(1, 2500),
    lookahead=st.floats(0.0, 1.0),
    dt=st.floats(0.003, 0.15),
    synth_delays=st.lists(st.floats(0.0, 0.6), min_size=5, max_size=5),
    cancel_at=st.one_of(st.none(), st.floats(0.0, 2.0)),
)
def test_schedule_invariants(lengths, chunk, lookahead, dt, synth_delays, cancel_at):
    out, clock, tts = make(chunk=chunk, lookahead=lookahead)
    t0 = clock.t
    ids = [out.say(f"n:{n}") for n in lengths]
    chunks, cancelled_at = [], None
    for d in synth_delays[:len(lengths)]:
        clock.t += d
        out.synthesize_next()
        chunks += out.poll()
    while clock.t < t0 + 10.0:
        clock.t += dt
        if cancel_at is not None and cancelled_at is None and clock.t >= t0 + cancel_at:
            out.cancel()
            cancelled_at = clock.t
        new = out.poll()
        assert all(c.stamp <= clock.t + lookahead + 1e-9 for c in new)  # the lookahead bound
        chunks += new
    # stamp order, no overlap anywhere, contiguous within an utterance
    assert all(b.first_sample >= a.end_sample for a, b in zip(chunks, chunks[1:]))
    per = by_utterance(chunks)
    for uid, n in zip(ids, lengths):
        u = out.status(uid)
        got = per.get(uid, [])
        assert_contiguous(got)
        total = sum(c.samples.size for c in got)
        assert total == u.released == u.samples
        if got:
            np.testing.assert_array_equal(np.concatenate([c.samples for c in got]), tts.audio(f"n:{n}")[:total])
        if u.state == "done":
            assert total == n
        else:  # cancelled: at a chunk boundary, nothing released after the cancel
            assert u.state == "cancelled" and total % chunk == 0 and cancelled_at is not None
    assert not out.busy


# ----------------------------------------------------------------------------- playout (the speaker)
def test_playout_plays_each_sample_at_stamp_plus_delay():
    p = Playout(output_delay=1.0)
    x = np.arange(1, 3201, dtype=np.float32)
    p.add(16000 * 100, x)  # stamped t = 100 s
    blocks, t = [], 100.9  # conversation time at the DAC of the first block
    for _ in range(40):
        blocks.append(p.read(139, t))
        t += 139 / SR
    y = np.concatenate(blocks)
    first = int(round((101.0 - 100.9) * SR))
    np.testing.assert_array_equal(y[:first], 0)  # silence before it is due
    np.testing.assert_array_equal(y[first:first + 3200], x)
    np.testing.assert_array_equal(y[first + 3200:], 0)
    assert p.counters.played_samples == 3200 and p.counters.resyncs == 1 and p.held_samples == 0


def test_playout_late_samples_are_skipped_and_counted():
    p = Playout(output_delay=0.5)
    p.read(160, 10.5)  # the position is now at stamp 10.01
    p.add(160_000, np.ones(320, np.float32))  # stamped 10.0: its first 160 samples are already past
    assert p.counters.late_samples == 160
    np.testing.assert_array_equal(p.read(160, 10.51), np.ones(160))


def test_playout_follows_clock_drift_by_slips_and_jumps_on_a_resync():
    p = Playout(output_delay=0.0, slip=0.002, resync=0.02)
    t = 50.0
    p.read(160, t)
    for _ in range(3000):  # the device runs 0.1 % slow against the conversation clock: 48 ms in 30 s
        t += 160 / SR * 1.001
        p.read(160, t)
    assert p.counters.slips > 0.8 * 480 and p.counters.resyncs == 1  # 480 samples followed one at a time
    for _ in range(100):  # the conversation clock steps 1 s ahead
        t += 160 / SR
        p.read(160, t + 1.0)
    assert p.counters.resyncs == 2


def test_playout_ignores_the_jitter_of_reported_dac_times():
    rng = np.random.default_rng(1)
    p = Playout(output_delay=0.5)
    x = rng.standard_normal(3 * SR).astype(np.float32)
    p.add(16000 * 10, x)  # stamped 10 s, due at the DAC at 10.5 s
    blocks, n, jitter = [], 0, 0.0
    while n < 4 * SR:  # blocks of varying size, DAC times reported up to 9 ms off (after the first)
        k = int(rng.integers(100, 400))
        blocks.append(p.read(k, 10.4 + n / SR + jitter))
        n, jitter = n + k, rng.uniform(-0.009, 0.009)
    y = np.concatenate(blocks)
    first = int(0.1 * SR)
    np.testing.assert_array_equal(y[:first], 0)
    np.testing.assert_array_equal(y[first:first + x.size], x)  # every sample once, in order: no slip, no jump
    assert p.counters.slips == 0 and p.counters.resyncs == 1


def test_playout_at_another_output_rate():
    p = Playout(output_delay=0.0, output_rate=48000)
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / SR).astype(np.float32)
    p.add(16000 * 20, tone)
    y = np.concatenate([p.read(480, 20.0 + k * 0.01) for k in range(100)])
    ref = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)
    assert np.max(np.abs(y[:-3] - ref[:-3])) < 0.02


def test_clock_offset_takes_the_lowest_readings_and_follows_drift_and_jumps():
    rng = np.random.default_rng(0)
    est = ClockOffset()
    true = 12.5
    for k in range(2000):  # 10 ms callbacks; each reading is late by a GIL wait of up to tens of ms
        t = k * 0.01
        got = est.update(true + 50e-6 * t + rng.exponential(0.004), t)  # the clocks drift apart by 50 ppm
    assert abs(got - (true + 50e-6 * 20.0)) < 0.001
    assert abs(est.update(true + 5.0, 20.01) - (true + 5.0)) < 1e-9  # a step of the conversation clock
