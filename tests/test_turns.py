"""TurnAssembler / MotionPlayer: pure timeline logic (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from timar_model.runtime.turns import AssemblerConfig, InputError, MotionPlayer, TurnAssembler, to_mono_16k

SR, FPS = 16000, 25
T0 = 1000.25  # an arbitrary clock origin (seconds)


def _signals(turns: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    user = rng.standard_normal(turns * SR).astype(np.float32) * 0.1
    agent = rng.standard_normal(turns * SR).astype(np.float32) * 0.1
    motion = rng.standard_normal((turns * FPS, 56)).astype(np.float32)
    return user, agent, motion


def _chunks(n: int, rng: np.random.Generator, lo: int = 100, hi: int = 3000):
    """Random chunk boundaries covering [0, n)."""
    out, a = [], 0
    while a < n:
        b = min(n, a + int(rng.integers(lo, hi)))
        out.append((a, b))
        a = b
    return out


def _feed_audio(add, signal: np.ndarray, bounds, jitter: float = 0.0, rng=None):
    for a, b in bounds:
        # the first chunk anchors the stream; later stamps jitter around the true sample times
        j = float(rng.uniform(-jitter, jitter)) if jitter and a > 0 else 0.0
        add(T0 + a / SR + j, signal[a:b])


def _feed_motion(asm: TurnAssembler, motion: np.ndarray, frames=None):
    for f in range(motion.shape[0]) if frames is None else frames:
        asm.add_user_motion(T0 + f / FPS, motion[f])


def test_jittered_chunks_reassemble_exactly():
    rng = np.random.default_rng(1)
    user, agent, motion = _signals(4)
    asm = TurnAssembler(AssemblerConfig(expect_agent_audio=True))
    # interleave: agent audio first (may be early), then motion, then user audio in random chunk sizes with
    # stamp jitter below the tolerance
    _feed_audio(asm.add_agent_audio, agent, _chunks(agent.size, rng))
    _feed_motion(asm, motion)
    _feed_audio(asm.add_user_audio, user, _chunks(user.size, rng), jitter=0.002, rng=rng)
    turns = asm.poll()
    assert [t.index for t in turns] == [0, 1, 2, 3]
    for k, t in enumerate(turns):
        np.testing.assert_array_equal(t.user_speech, user[k * SR : (k + 1) * SR])
        np.testing.assert_array_equal(t.agent_speech, agent[k * SR : (k + 1) * SR])
        np.testing.assert_array_equal(t.user_motion, motion[k * FPS : (k + 1) * FPS])
        assert t.start_time == pytest.approx(T0 + k)
        assert t.stats.reason == "complete"
        assert t.user_speech.shape == (SR,) and t.user_motion.shape == (FPS, 56)
    c = asm.counters
    assert c.gaps == 0 and c.overlaps == 0 and c.late_drops == 0 and c.complete_turns == 4
    assert asm.buffered_turns == 0  # memory of emitted turns released


def test_turn_not_emitted_before_all_streams_cover_its_end():
    user, agent, motion = _signals(2)
    asm = TurnAssembler(AssemblerConfig(expect_agent_audio=True))
    asm.add_user_audio(T0, user[:SR])
    _feed_motion(asm, motion[:FPS])
    assert asm.poll() == []  # agent audio missing
    asm.add_agent_audio(T0, agent[: SR - 10])
    assert asm.poll() == []  # agent audio does not reach the turn's end
    asm.add_agent_audio(T0 + (SR - 10) / SR, agent[SR - 10 : SR])
    (t,) = asm.poll()
    assert t.index == 0 and t.stats.reason == "complete"


def test_absent_agent_audio_is_silence_when_not_expected():
    user, _, motion = _signals(2)
    asm = TurnAssembler(AssemblerConfig(expect_agent_audio=False))
    asm.add_user_audio(T0, user)
    _feed_motion(asm, motion)
    turns = asm.poll()
    assert len(turns) == 2
    assert all(not t.agent_speech.any() for t in turns)
    assert turns[0].stats.agent_audio_missing == SR


def test_gap_is_silence_and_counted_then_deadline_emits_with_hold_last():
    user, _, motion = _signals(3)
    asm = TurnAssembler(AssemblerConfig(deadline=0.2, motion_hold=2.0))  # held for the whole test
    asm.add_user_audio(T0, user[:8000])
    asm.add_user_audio(T0 + 12000 / SR, user[12000:SR + 4000])  # 0.25 s gap inside turn 0
    _feed_motion(asm, motion, frames=range(0, 10))  # motion stops at frame 9
    assert asm.counters.gaps == 1
    assert asm.counters.gap_seconds == pytest.approx(0.25)
    assert asm.poll(now=T0 + 1.1) == []  # before the deadline: motion does not cover the end
    (t,) = asm.poll(now=T0 + 1.2)
    assert t.stats.reason == "deadline"
    assert t.stats.user_audio_missing == 4000 and not t.user_speech[8000:12000].any()
    np.testing.assert_array_equal(t.user_speech[12000:], user[12000:SR])
    assert t.stats.user_motion_missing == 15
    np.testing.assert_array_equal(t.user_motion[10:], np.repeat(motion[9:10], 15, axis=0))
    # turn 1: no motion at all -> still the held frame 9; audio only partly there
    (t1,) = asm.poll(now=T0 + 2.2)
    np.testing.assert_array_equal(t1.user_motion, np.repeat(motion[9:10], 25, axis=0))
    assert t1.stats.user_audio_missing == SR - 4000
    assert asm.counters.deadline_turns == 2 and asm.counters.held_motion_frames == 15 + 25


def test_motion_before_any_frame_is_neutral_and_hold_within_turn():
    user, _, motion = _signals(1)
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False), origin=T0)
    asm.add_user_motion(T0 + 5 / FPS, motion[5])
    asm.add_user_audio(T0, user)
    (t,) = asm.poll()
    assert not t.user_motion[:5].any()
    np.testing.assert_array_equal(t.user_motion[5:], np.repeat(motion[5:6], 20, axis=0))


def test_out_of_order_overlap_and_late_drops():
    user, _, motion = _signals(3)
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False), origin=T0)
    asm.add_user_audio(T0 + 0.5, user[8000:SR])
    asm.add_user_audio(T0, user[:8000])  # out of order but still useful
    assert asm.counters.out_of_order == 1
    (t,) = asm.poll()
    np.testing.assert_array_equal(t.user_speech, user[:SR])
    asm.add_user_audio(T0 + 0.75, user[12000 : SR + 8000])  # overlaps emitted turn 0 -> late part dropped
    assert asm.counters.late_drops == 1
    asm.add_user_audio(T0 + 1.25, user[SR + 4000 : SR + 6000])  # overlaps buffered data of turn 1
    assert asm.counters.overlaps == 1
    asm.add_user_motion(T0 + 0.2, motion[5])  # motion for emitted turn 0
    assert asm.counters.late_drops == 2
    asm.add_user_audio(T0 + 1.5, user[SR + 8000 : 2 * SR])
    (t1,) = asm.poll()
    np.testing.assert_array_equal(t1.user_speech, user[SR : 2 * SR])


def test_resampling_and_downmix():
    sr_in, ch = 48000, 2
    t = np.arange(2 * sr_in) / sr_in
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)  # interleaved
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False))
    step = 4800  # 0.1 s chunks at 48 kHz
    for a in range(0, tone.size, step):
        asm.add_user_audio(T0 + a / sr_in, stereo[2 * a : 2 * (a + step)], sample_rate=sr_in, channels=ch)
    turns = asm.poll()
    assert len(turns) == 2 and asm.counters.resampled_chunks == 20
    ref = (0.5 * np.sin(2 * np.pi * 220 * np.arange(2 * SR) / SR)).astype(np.float32)
    got = np.concatenate([tt.user_speech for tt in turns])
    assert np.max(np.abs(got[100:-100] - ref[100:-100])) < 0.02  # away from the stream's outer edges
    assert asm.counters.gaps == 0 and asm.counters.overlaps == 0


def test_to_mono_rejects_bad_chunks():
    with pytest.raises(InputError, match="multiple of channels"):
        to_mono_16k(np.zeros(5, np.float32), 16000, 2)
    with pytest.raises(InputError, match="NaN"):
        to_mono_16k(np.array([0.0, np.nan], np.float32), 16000, 1)
    asm = TurnAssembler()
    with pytest.raises(InputError, match="56"):
        asm.add_user_motion(T0, np.zeros(55))
    with pytest.raises(InputError, match="sample_rate"):
        asm.add_user_audio(T0, np.zeros(10), sample_rate=0)
    assert asm.counters.rejected == 2 and asm.origin is None


@pytest.mark.parametrize("jump", [-2.0, 30.0])
def test_clock_jump_resets_timeline(jump):
    user, _, _ = _signals(3)
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False))
    asm.add_user_audio(T0, user[:SR])
    (t,) = asm.poll()
    assert t.epoch == 0
    asm.add_user_audio(T0 + 1.0, user[SR : SR + 4000])
    t_new = T0 + 1.25 + jump
    asm.add_user_audio(t_new, user[:1600])
    assert asm.counters.clock_jumps == 0 and asm.epoch == 0  # one message is no jump yet: held
    for a in range(1600, 2 * SR, 1600):  # the next one, which fits the first, confirms it
        asm.add_user_audio(t_new + a / SR, user[a : a + 1600])
    assert asm.counters.clock_jumps == 1 and asm.counters.outlier_stamps == 0
    assert asm.origin == pytest.approx(t_new)
    turns = asm.poll()
    assert [(x.index, x.epoch) for x in turns] == [(0, 1), (1, 1)]
    np.testing.assert_array_equal(turns[0].user_speech, user[:SR])
    assert turns[0].start_time == pytest.approx(t_new)


def test_early_agent_audio_before_origin_and_future_stamps():
    user, agent, _ = _signals(3)
    asm = TurnAssembler(AssemblerConfig(expect_agent_audio=True, expect_user_motion=False))
    asm.add_agent_audio(T0, agent)  # all 3 s at once, before any user data
    asm.add_user_audio(T0, user[: 2 * SR])
    turns = asm.poll()
    assert len(turns) == 2
    np.testing.assert_array_equal(turns[1].agent_speech, agent[SR : 2 * SR])


def test_memory_bounded_far_future_dropped():
    asm = TurnAssembler(AssemblerConfig(max_buffered_turns=4, expect_user_motion=False))
    asm.add_user_audio(T0, np.zeros(100, np.float32))
    asm.add_agent_audio(T0 + 6.0, np.ones(SR, np.float32))  # beyond the 4-turn window
    assert asm.counters.too_far_ahead == 1 and asm.buffered_turns == 1


def test_deadline_stops_when_input_idle():
    asm = TurnAssembler(AssemblerConfig(idle_timeout=2.0, deadline=0.1))
    asm.add_user_audio(T0, np.zeros(SR // 2, np.float32))
    turns = asm.poll(now=T0 + 100.0)
    # the last user data ends at T0 + 0.5: turns ending up to T0 + 2.5 are emitted, then it waits
    assert [t.index for t in turns] == [0, 1]


def test_player_stamps_and_release():
    player = MotionPlayer(fps=25, output_delay=1.12)
    frames = np.arange(25 * 56, dtype=np.float32).reshape(25, 56)
    player.push(3, 10.0, frames)
    assert player.due(11.0) == []
    first = player.due(11.121)
    assert [f.frame_index for f in first] == [0]
    assert first[0].stamp == pytest.approx(10.0 + 1.12)
    rest = player.due(11.601) + player.due(12.1)
    assert [f.frame_index for f in rest] == list(range(1, 25))
    assert [f.stamp for f in rest] == pytest.approx([10.0 + i / 25 + 1.12 for i in range(1, 25)])
    np.testing.assert_array_equal(rest[-1].motion, frames[24])
    assert player.counters.late_frames > 0  # released in a burst after their display time
    # a frame older than the last one released is dropped, keeping the stream monotonic
    player.push(2, 9.9, frames)
    assert player.due(12.3) == [] and player.counters.dropped_frames == 25
    with pytest.raises(ValueError, match="56"):
        player.push(4, 11.0, np.zeros((25, 3)))


def test_agent_audio_after_a_long_silence_does_not_reset_the_timeline():
    """The robot may be silent for longer than max_jump_forward: its next words are not a clock jump."""
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=False))
    chunk = np.zeros(1600, np.float32)
    for k in range(30):  # 30 s of the user, the robot speaks at 1 s and again at 25 s
        for c in range(10):
            asm.add_user_audio(100.0 + k + c / 10, chunk)
        if k in (1, 25):
            asm.add_agent_audio(100.0 + k, np.ones(16000, np.float32))
        asm.poll()
    assert asm.epoch == 0 and asm.counters.clock_jumps == 0
    assert asm.next_index == 30


def test_lost_partner_motion_is_held_then_eased_to_neutral():
    cfg = AssemblerConfig(expect_user_motion=False, motion_hold=1.0, motion_ease=1.0)
    asm = TurnAssembler(cfg)
    pose = np.full(56, 0.5, np.float32)
    for f in range(25):  # the tracker sees the partner during turn 0 only
        asm.add_user_motion(10.0 + f / 25, pose)
    for k in range(5):
        asm.add_user_audio(10.0 + k, np.zeros(16000, np.float32))
    turns = asm.poll()
    assert [t.index for t in turns] == [0, 1, 2, 3, 4]
    m = np.concatenate([t.user_motion for t in turns])  # (125, 56)
    level = m[:, 0] / 0.5
    np.testing.assert_allclose(level[:50], 1.0)  # seen, then held for 1 s
    np.testing.assert_allclose(np.diff(level[49:75]), -1.0 / 25, atol=1e-6)  # eased linearly over 1 s ...
    np.testing.assert_allclose(m[74:], 0.0)  # ... and neutral until the partner is seen again
    assert asm.counters.held_motion_frames == 100 and asm.counters.eased_motion_frames == 75
    for f in range(125, 150):  # seen again: real frames at once
        asm.add_user_motion(10.0 + f / 25, 2 * pose)
    asm.add_user_audio(15.0, np.zeros(16000, np.float32))
    np.testing.assert_allclose(asm.poll()[0].user_motion, 1.0)
