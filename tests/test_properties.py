"""Property-based tests (hypothesis) of what every robot command, every turn and every message goes through:
the joint RateLimiter never exceeds its limits, whatever the targets; the TurnAssembler emits each turn once, in
order, well formed and with bounded memory, whatever the chunking, losses, duplicates and reordering; message
<-> numpy conversion round-trips and refuses malformed partner messages without a crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timar_model.motion import FPS, HEAD_ROT, MOTION_DIM, SAMPLE_RATE
from timar_model.runtime.robot_head import JointLimits, RateLimiter
from timar_model.runtime.turns import AssemblerConfig, TurnAssembler

EPS = 1e-9

limits_st = st.builds(
    lambda lo, span, v, a: JointLimits(lo, lo + span, v, a),
    st.floats(-2.0, 1.0), st.floats(0.05, 3.0), st.floats(0.1, 10.0), st.floats(1.0, 200.0),
)
target_st = st.one_of(st.floats(-10.0, 10.0), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=150, deadline=None)
@given(
    limits=st.lists(limits_st, min_size=1, max_size=4),
    steps=st.lists(st.lists(target_st, min_size=4, max_size=4), min_size=2, max_size=60),
    dt=st.floats(0.005, 0.1),
)
def test_rate_limiter_never_exceeds_its_limits(limits, steps, dt):
    lim = RateLimiter(limits)
    n = len(limits)
    lower, upper = lim.lower, lim.upper
    prev = None
    for targets in steps:
        s = lim.step(np.array(targets[:n]), dt)
        assert np.all(np.isfinite(s.position)) and np.all(np.isfinite(s.velocity))
        assert np.all(s.position >= lower - EPS) and np.all(s.position <= upper + EPS)
        assert np.all(np.abs(s.velocity) <= lim.vmax * (1 + 1e-9) + EPS)
        if prev is not None:
            v = (s.position - prev.position) / dt
            np.testing.assert_allclose(v, s.velocity, atol=1e-9)
            assert np.all(np.abs(s.acceleration) <= lim.amax * (1 + 1e-6) + 1e-6)
        prev = s


@settings(max_examples=80, deadline=None)
@given(
    turns=st.integers(1, 6),
    chunk=st.sampled_from([160, 320, 1000, 1600, 4000]),
    drop=st.lists(st.booleans(), min_size=0, max_size=200),
    dup=st.lists(st.booleans(), min_size=0, max_size=200),
    swap=st.lists(st.booleans(), min_size=0, max_size=200),
    t0=st.floats(0.0, 1e6),
)
def test_turn_assembler_emits_each_turn_once_in_order_and_well_formed(turns, chunk, drop, dup, swap, t0):
    asm = TurnAssembler(AssemblerConfig(expect_user_motion=True, deadline=0.08, idle_timeout=10.0))
    events = []  # (kind, stamp, payload)
    for i, a in enumerate(range(0, turns * SAMPLE_RATE, chunk)):
        events.append(("audio", t0 + a / SAMPLE_RATE, np.full(chunk, 0.01 * (i % 7), np.float32)))
    for f in range(turns * FPS):
        events.append(("motion", t0 + f / FPS, np.full(MOTION_DIM, 0.001 * f, np.float32)))
    events.sort(key=lambda e: e[1])
    stream = []
    for i, e in enumerate(events):  # lose some, duplicate some, swap some neighbours (out of order)
        if i < len(drop) and drop[i]:
            continue
        stream.append(e)
        if i < len(dup) and dup[i]:
            stream.append(e)
    for i in range(len(stream) - 1):
        if i < len(swap) and swap[i]:
            stream[i], stream[i + 1] = stream[i + 1], stream[i]
    emitted = []
    for kind, stamp, x in stream:
        if kind == "audio":
            asm.add_user_audio(stamp, x)
        else:
            asm.add_user_motion(stamp, x)
        emitted += asm.poll(stamp)
        assert asm.buffered_turns <= asm.config.max_buffered_turns
    emitted += asm.poll(t0 + turns + 1.0)  # every deadline has passed
    assert asm.epoch == 0 and asm.counters.clock_jumps == 0  # reordering by one chunk is no clock jump
    if asm.origin is None:
        return
    idx = [t.index for t in emitted]
    assert idx == list(range(len(idx)))  # in order, each exactly once
    last = max(stamp for _, stamp, _ in stream)
    assert emitted and emitted[-1].start_time + 1.0 > last  # every turn that holds data was emitted
    for t in emitted:
        assert t.user_speech.shape == (SAMPLE_RATE,) and t.agent_speech.shape == (SAMPLE_RATE,)
        assert t.user_motion.shape == (FPS, MOTION_DIM)
        assert np.isfinite(t.user_speech).all() and np.isfinite(t.user_motion).all()
        assert t.start_time == asm.origin + t.index


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=150, deadline=None)
@given(motion=st.lists(finite, min_size=MOTION_DIM, max_size=MOTION_DIM), stamp=st.floats(0.0, 4e9),
       turn=st.integers(0, 2**32 - 1), frame=st.integers(0, 2**32 - 1))
def test_head_motion_message_round_trip(motion, stamp, turn, frame):
    convert = pytest.importorskip("timar_ros.convert")
    m = np.array(motion, np.float32)
    msg = convert.head_motion_msg(m, stamp, "f", turn, frame)
    np.testing.assert_array_equal(convert.motion_from_msg(msg), m)
    assert abs(convert.stamp_to_sec(msg.header.stamp) - stamp) <= 1e-9 * max(1.0, stamp)
    assert (msg.turn_index, msg.frame_index) == (turn, frame)


@settings(max_examples=150, deadline=None)
@given(expression=st.lists(finite, max_size=80), quat=st.lists(st.floats(allow_nan=True, allow_infinity=True,
                                                                          width=32), min_size=4, max_size=4))
def test_malformed_partner_messages_are_refused_not_crashing(expression, quat):
    """Any expression length other than 50 is a ValueError; any quaternion gives a finite rotation or a
    ValueError (zero length, NaN, inf), never a NaN in the motion."""
    convert = pytest.importorskip("timar_ros.convert")
    from geometry_msgs.msg import PoseStamped
    from timar_msgs.msg import HeadMotion

    msg = HeadMotion(expression=np.array(expression, np.float32).tolist())
    if len(expression) == 50:
        assert convert.motion_from_msg(msg).shape == (MOTION_DIM,)
    else:
        with pytest.raises(ValueError):
            convert.motion_from_msg(msg)
    pose = PoseStamped()
    o = pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    try:
        m = convert.motion_from_pose(pose)
    except ValueError:
        return
    assert np.isfinite(m).all() and np.linalg.norm(m[HEAD_ROT]) <= np.pi + 1e-5
