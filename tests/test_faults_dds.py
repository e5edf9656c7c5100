"""Faults through the real agent node over DDS.

- In-process (the node spun by this test, its generator's step monkeypatched to run out of memory): every
  failed turn is still published (held, finite), and after `max_inference_failures` failures in a row the node
  goes through ErrorProcessing to unconfigured with a clear error (log and /diagnostics); configured and
  activated again it generates.
- The agent process (the shipped model), fed by a driver process: bad audio of every kind on user/audio and
  agent/audio, duplicated and reordered chunks, a far-future and a far-past stamp, then 2 s of stamps an hour
  ahead of the clock and back. The agent keeps running, its output stays finite, every fault is counted by kind
  in /diagnostics and each kind is logged once (rate-limited); the timeline resynchronises after the excursion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
MODEL = ROOT / "models" / "timar-small-synth"

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up"),
]


def test_repeated_inference_failures_take_the_agent_to_the_lifecycle_error_path_and_back(ros_domain_id):
    rclpy = pytest.importorskip("rclpy")
    import torch
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from timar_msgs.msg import AudioChunk, HeadMotionTurn
    from timar_ros import qos
    from timar_ros.agent import TimarAgent
    from timar_ros.convert import sec_to_stamp

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        node = TimarAgent(context=ctx, parameter_overrides=[
            Parameter("checkpoint", value=str(MODEL)), Parameter("autostart", value=False),
            Parameter("threads", value=1), Parameter("user_motion_source", value="none"),
            Parameter("max_inference_failures", value=3), Parameter("diagnostics_period", value=0.2)])
        driver = rclpy.create_node("driver", context=ctx)
        audio = driver.create_publisher(AudioChunk, "user/audio", qos.audio())
        turns, diags = [], []
        driver.create_subscription(HeadMotionTurn, "agent/motion_turn", turns.append, qos.per_turn())
        driver.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
            s for s in m.status if s.name == "timar/agent"), qos.diagnostics())
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        ex.add_node(driver)
        state = lambda: node._state_machine.current_state[1]  # noqa: E731
        now = lambda: driver.get_clock().now().nanoseconds * 1e-9  # noqa: E731

        def talk(until, timeout: float = 90.0) -> None:
            """Publish 0.1 s user audio chunks on the clock (each when its last sample is due) until until()."""
            end = time.monotonic() + timeout
            t = now()
            while not until():
                assert time.monotonic() < end, f"timed out in state {state()}"
                ex.spin_once(timeout_sec=0.01)
                if now() >= t + 0.1:
                    x = (0.1 * np.random.default_rng(int(t * 10)).standard_normal(1600)).astype(np.float32)
                    msg = AudioChunk(sample_rate=16000, channels=1, data=x.tolist())
                    msg.header.stamp = sec_to_stamp(t)
                    audio.publish(msg)
                    t += 0.1

        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        calls = []

        def out_of_memory(*args, **kwargs):
            calls.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        node.live.gen.step = out_of_memory  # the model fails on every turn from now on
        t_fail = time.monotonic()
        talk(lambda: state() == "unconfigured")
        print(f"first failure -> unconfigured: {time.monotonic() - t_fail:.2f} s ({len(calls)} failed turns)")
        assert node.live is None  # ErrorProcessing released the model
        talk(lambda: len(turns) >= 3, timeout=10)  # the third failed turn went out before the transition
        assert len(calls) == 3
        for t in turns:  # every failed turn was published: the last frame held (neutral before any), finite
            m = np.array([list(f.expression) + list(f.jaw_pose) + list(f.head_rotation) for f in t.frames])
            assert m.shape == (25, 56) and np.isfinite(m).all()
        talk(lambda: any(s.level == DiagnosticStatus.ERROR for s in diags), timeout=10)
        err = next(s for s in diags if s.level == DiagnosticStatus.ERROR)
        assert "3 turns in a row" in err.message and "OutOfMemoryError" in err.message
        # configured again (a lifecycle manager would), the agent generates
        t_conf = time.monotonic()
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        talk(lambda: node.live.counters.turns_generated >= 1)
        print(f"configure again -> first generated turn: {time.monotonic() - t_conf:.2f} s")
        talk(lambda: node.live.counters.turns_generated >= 2)
        assert node.live.counters.inference_errors == 0 and node.live.fatal is None
        node.trigger_shutdown()
        node.destroy_node()
        driver.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


DRIVER = r"""
import json, math, sys, time
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from timar_msgs.msg import AudioChunk, HeadMotion, HeadMotionTurn
from timar_ros import qos
from timar_ros.convert import sec_to_stamp

out = sys.argv[1]
rclpy.init()
node = rclpy.create_node("fault_driver")
now = lambda: node.get_clock().now().nanoseconds * 1e-9
user = node.create_publisher(AudioChunk, "user/audio", qos.audio())
agent = node.create_publisher(AudioChunk, "agent/audio", qos.audio())
got = {"turns": [], "frames": 0, "nonfinite_frames": 0, "diag": {}, "phase_c": None}
def on_turn(m):
    x = np.array([list(f.expression) + list(f.jaw_pose) + list(f.head_rotation) for f in m.frames])
    got["turns"].append({"recv": now(), "index": m.turn_index, "epoch": m.epoch, "finite": bool(np.isfinite(x).all())})
def on_frame(m):
    got["frames"] += 1
    got["nonfinite_frames"] += int(not np.isfinite(list(m.expression) + list(m.jaw_pose) + list(m.head_rotation)).all())
def on_diag(m):
    for st in m.status:
        if st.name == "timar/agent":
            got["diag"] = {kv.key: kv.value for kv in st.values}
node.create_subscription(HeadMotionTurn, "agent/motion_turn", on_turn, qos.per_turn())
node.create_subscription(HeadMotion, "agent/head_motion", on_frame, qos.frames())
node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos.diagnostics())
deadline = time.monotonic() + 120
while user.get_subscription_count() < 1 or agent.get_subscription_count() < 1 or not got["diag"]:
    rclpy.spin_once(node, timeout_sec=0.05)
    if time.monotonic() > deadline:
        sys.exit("the agent did not come up")

rng = np.random.default_rng(0)
def chunk(stamp, data, rate=16000, channels=1, pub=user):
    m = AudioChunk(sample_rate=int(rate), channels=int(channels), data=np.asarray(data, np.float32).tolist())
    m.header.stamp = sec_to_stamp(stamp)
    pub.publish(m)
def speech():
    return (0.1 * rng.standard_normal(1600)).astype(np.float32)
def spin_until(t):
    while now() < t:
        rclpy.spin_once(node, timeout_sec=0.005)

T0 = now() + 0.5
later = {}  # n -> chunk data held back (reordering)
for n in range(130):
    s = T0 + 0.1 * n
    spin_until(s + 0.1)  # published when its last sample is due, as a microphone driver does
    if 60 <= n < 80:
        s += 3600.0  # phase B: the stamps run an hour ahead of the clock for 2 s
    if n == 80:
        got["phase_c"] = now()
    x = speech()
    if n in (10, 20, 30):
        x[::320] = np.nan  # 5 NaN: set to 0
    if n == 11:
        x[:100] = 1e30  # clipped
    if n in (12, 13, 14):
        up = np.interp(np.arange(4800) / 3, np.arange(1600), x)
        chunk(s, np.repeat(up, 2), 48000, 2)  # stereo at 48 kHz: downmixed and resampled
        continue
    if n == 16:
        chunk(s, np.interp(np.arange(4410) * 16000 / 44100, np.arange(1600), x), 44100)
        continue
    if n == 18:  # six chunks that cannot be used, besides the real one
        chunk(s, [])
        chunk(s, np.zeros(1601), channels=2)
        chunk(s, np.full(1600, np.nan))
        chunk(s, np.zeros(1600), rate=0)
        chunk(s, np.zeros(20 * 16000))
        chunk(s, np.zeros(1600), channels=0)
    if n == 27:
        later[27] = (s, x)  # published after chunk 28: out of order
        continue
    chunk(s, x)
    if n == 25:
        chunk(s, x)  # a duplicate
    if n == 28:
        chunk(*later.pop(27))
    if n == 35:
        chunk(s + 3600.0, speech())  # one far-future stamp ...
    if n == 45:
        chunk(100000.0, speech())  # ... and one far in the past
    if n in (40, 41, 42):
        chunk(s, np.full(1600, np.nan), pub=agent)  # the agent's own audio: no finite sample
    if n == 43:
        y = speech()
        y[:10] = np.inf
        chunk(s, y, pub=agent)
spin_until(now() + 3.0)
json.dump(got, open(out, "w"))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.slow
def test_bad_audio_and_stamps_through_the_agent_process(ros_domain_id, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    agent = subprocess.Popen(
        ["bash", "-c", f"source {ENV_SH} && exec python -X faulthandler -m timar_ros.agent --ros-args "
                       f"-p checkpoint:={MODEL} -p user_motion_source:=none -p threads:=1 "
                       "-p diagnostics_period:=0.5 -p idle_timeout:=0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (tmp_path / "driver.py").write_text(DRIVER)
    try:
        driver = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'driver.py'} "
                                               f"{tmp_path / 'out.json'}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        alive = agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            log = agent.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            agent.kill()
            log = agent.communicate()[0]
    assert driver.returncode == 0, driver.stdout + driver.stderr + log
    assert alive and agent.returncode == 0, log  # it kept running, and stopped cleanly on SIGTERM
    got = json.loads((tmp_path / "out.json").read_text())
    d = got["diag"]
    user = {k.split(".")[-1]: int(v) for k, v in d.items() if k.startswith("audio_faults.user.")}
    agent_f = {k.split(".")[-1]: int(v) for k, v in d.items() if k.startswith("audio_faults.agent.")}
    assert user == {"nonfinite": 3, "clipped": 1, "multichannel": 3, "rate_changed": 4, "empty": 1,
                    "all_nonfinite": 1, "misaligned": 1, "bad_channels": 1, "bad_rate": 1, "too_long": 1,
                    "bad_stamp": 0}, user
    assert agent_f["all_nonfinite"] == 3 and agent_f["nonfinite"] == 1, agent_f
    assert int(d["input_errors"]) == 6 + 3
    assert int(d["assembler.outlier_stamps"]) == 2  # the lone far-future and far-past chunks
    assert int(d["assembler.clock_jumps"]) == 2  # an hour ahead for 2 s, and back
    assert int(d["assembler.overlaps"]) >= 1 and int(d["assembler.out_of_order"]) >= 1
    assert int(d["early_turns"]) >= 1  # turns an hour ahead: not generated
    assert int(d["inference_errors"]) == 0
    # the output stayed finite, and the timeline resynchronised after the excursion: fresh turns of the third
    # epoch (0: before, 1: an hour ahead, 2: after) come within a few turns of data
    assert got["nonfinite_frames"] == 0 and got["frames"] > 0
    assert all(t["finite"] for t in got["turns"])
    assert {t["epoch"] for t in got["turns"]} == {0, 2}, {t["epoch"] for t in got["turns"]}
    fresh = [t for t in got["turns"] if t["epoch"] == 2]
    assert fresh and min(t["index"] for t in fresh) <= 2
    first = min(fresh, key=lambda t: t["recv"])
    print(f"after the stamps came back: first turn of the new timeline is turn {first['index']}, published "
          f"{first['recv'] - got['phase_c']:.2f} s after the first chunk on the clock again; "
          f"{int(d['early_turns'])} turns an hour ahead dropped; diagnostics: "
          + ", ".join(f"{k}={v}" for k, v in d.items() if k.startswith(("audio_faults", "assembler.outlier",
                                                                        "assembler.clock", "input_errors"))))
    # each kind of fault is logged once (rate-limited: within warning_period only the first is printed)
    assert log.count("user audio: NaN/Inf samples set to 0") == 1, log
    assert log.count("user audio: sample rate changed") == 1, log
    for text in ("chunk without samples dropped", "not a multiple of its channel count", "no finite sample",
                 "sample rate outside", "longer than the buffered window", "channel count < 1",
                 "agent audio: chunk without one finite sample", "off the timeline", "stamps jumped"):
        assert text in log, text
