"""The responder's turn-taking (timar_model.runtime.responder), pure Python: espeak-ng user speech with pauses in,
replies out. The node itself is tested over DDS at the end of this file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from timar_model.runtime.responder import ResponderConfig, Script, TurnTaking, read_script
from timar_model.runtime.vad import VadConfig

SR = 16000
T0 = 50.0  # s; stamp of the first sample
TOL = 0.1  # s; VAD boundary tolerance (tests/test_vad.py)
# s; silero's end of a turn: its recurrent state and the lower hold threshold keep a fading voice "speech" for
# a few 32 ms windows more, so its end comes later than the energy backend's (by how much depends on the word
# and on how the windows fall on it, which moves with what espeak-ng said before: tts.Espeak.fresh)
END_TOL = {"energy": TOL, "silero": 0.15}
ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"



@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    """silero sets the process's torch threads to 1; the tests that run after these get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

@pytest.fixture(scope="module")
def tts():
    from timar_model.tts import EspeakTTS

    return EspeakTTS()


def conversation(tts, parts: list[tuple[str, str | float]]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """[("say", text) | ("pause", seconds)] -> (audio, [(start, end) s of each spoken part, stamps from T0])."""
    pieces, spans, n = [], [], 0
    for kind, value in parts:
        x = tts.synthesize(value).samples if kind == "say" else np.zeros(round(value * SR), np.float32)
        if kind == "say":
            spans.append((T0 + n / SR, T0 + (n + x.size) / SR))
        pieces.append(x)
        n += x.size
    return np.concatenate(pieces), spans


def feed_all(tt: TurnTaking, audio: np.ndarray, chunk: int = 1600, on_chunk=None) -> list:
    replies = []
    for i in range(0, audio.size, chunk):
        if on_chunk is not None:
            replies += on_chunk(T0 + i / SR)
        replies += tt.feed(audio[i:i + chunk], T0 + i / SR, SR)
    return replies


@pytest.mark.parametrize("backend", ["energy", "silero"])
def test_a_reply_after_each_user_turn_and_pause(tts, backend):
    audio, spans = conversation(tts, [
        ("pause", 0.5), ("say", "So I went to the market yesterday"), ("pause", 0.35),  # a short pause inside a turn
        ("say", "and bought some coffee."), ("pause", 2.0),
        ("say", "Then I walked home along the river."), ("pause", 2.0),
    ])
    tt = TurnTaking(Script(["One.", "Two.", "Three."]), ResponderConfig(vad=VadConfig(backend=backend)))
    replies = feed_all(tt, audio)
    assert [r.text for r in replies] == ["One.", "Two."]
    first, second = replies
    # the first turn spans both phrases (its inner pause is shorter than `pause`)
    assert abs(first.user_start - spans[0][0]) <= TOL and abs(first.user_end - spans[1][1]) <= END_TOL[backend]
    assert abs(second.user_start - spans[2][0]) <= TOL and abs(second.user_end - spans[2][1]) <= END_TOL[backend]
    for r in replies:  # decided once the user has been quiet for `pause`, within one 32 ms window
        assert r.user_end + 0.7 - 1e-9 <= r.decided_at <= r.user_end + 0.7 + 0.032 + 1e-9
    assert tt.turns == 2 and tt.replies == 2 and not tt.user_speaking


def test_short_turns_are_not_answered(tts):
    audio, _ = conversation(tts, [("pause", 0.5), ("say", "yes"), ("pause", 1.5),
                                  ("say", "I think that was a great idea."), ("pause", 1.5)])
    tt = TurnTaking(Script(["Reply."]), ResponderConfig(min_user_speech=0.8, vad=VadConfig(backend="energy")))
    replies = feed_all(tt, audio)
    assert [r.text for r in replies] == ["Reply."]
    assert tt.turns == 2 and tt.short_turns == 1


def test_no_reply_while_the_robot_speaks(tts):
    """The turn ends while the robot speaks: answered when it stops; if the user starts again first, the turn
    that follows is answered instead."""
    audio, spans = conversation(tts, [("pause", 0.5), ("say", "Tell me about your day."), ("pause", 2.5),
                                      ("say", "Mine was very long."), ("pause", 2.0)])
    tt = TurnTaking(Script(["A.", "B."]), ResponderConfig(vad=VadConfig(backend="energy")))
    stop_at = spans[0][1] + 1.5  # the robot stops 1.5 s after the first turn's end

    def robot(now: float) -> list:
        if now < spans[0][1] and not tt.agent_speaking:
            return tt.set_agent_speaking(True)
        if now >= stop_at and tt.agent_speaking:
            return tt.set_agent_speaking(False)
        return []

    replies = feed_all(tt, audio, on_chunk=robot)
    assert [r.text for r in replies] == ["A.", "B."]
    assert abs(replies[0].user_end - spans[0][1]) <= TOL
    assert replies[0].decided_at >= stop_at - 1e-9  # not before the robot stopped
    assert abs(replies[1].user_end - spans[1][1]) <= TOL

    # the user starts again before the robot stops: the first turn is never answered, the second is
    tt = TurnTaking(Script(["A.", "B."]), ResponderConfig(vad=VadConfig(backend="energy")))
    stop_at = spans[1][0] + 0.6

    replies = feed_all(tt, audio, on_chunk=robot)
    assert [r.text for r in replies] == ["A."]
    assert abs(replies[0].user_start - spans[1][0]) <= TOL


def test_script_file_loop_and_errors(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("# comment\n\n  First line.  \n#another\nSecond line.\n")
    assert read_script(path) == ["First line.", "Second line."]
    looped = Script(read_script(path), loop=True)
    assert [looped.next() for _ in range(5)] == ["First line.", "Second line."] * 2 + ["First line."]
    once = Script(read_script(path), loop=False)
    assert [once.next() for _ in range(3)] == ["First line.", "Second line.", None] and once.exhausted
    with pytest.raises(FileNotFoundError, match="responder script not found"):
        read_script(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only comments\n\n")
    with pytest.raises(ValueError, match="has no reply"):
        read_script(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="pause"):
        ResponderConfig(pause=0)
    assert len(read_script(ROOT / "config" / "responder_script.txt")) >= 5  # the shipped script


def test_a_script_that_ran_out_says_nothing(tts):
    audio, _ = conversation(tts, [("say", "Hello there, my friend."), ("pause", 1.5),
                                  ("say", "Are you still listening?"), ("pause", 1.5)])
    tt = TurnTaking(Script(["Only line."], loop=False), ResponderConfig(vad=VadConfig(backend="energy")))
    assert [r.text for r in feed_all(tt, audio)] == ["Only line."]
    assert tt.turns == 2 and tt.script.exhausted


# ----------------------------------------------------------------------------- the node over DDS
DRIVER = r"""
import json, sys, time
import numpy as np, rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, String
from timar_msgs.msg import AudioChunk
from timar_ros import qos
from timar_ros.convert import sec_to_stamp
audio = np.load(sys.argv[1])
rclpy.init()
node = rclpy.create_node("responder_driver")
said = []
node.create_subscription(String, "agent/say", lambda m: said.append((time.monotonic(), m.data)), 10)
pub = node.create_publisher(AudioChunk, "user/audio", qos.audio())
speaking = node.create_publisher(Bool, "agent/speaking", qos.latched())
t_end = time.monotonic() + 60
while (pub.get_subscription_count() < 1 or node.count_publishers("agent/say") < 1) and time.monotonic() < t_end:
    rclpy.spin_once(node, timeout_sec=0.1)
speaking.publish(Bool(data=False))
w0, t0 = time.monotonic(), time.time()
for i in range(0, audio.size, 1600):  # real time, 0.1 s chunks
    while time.monotonic() < w0 + (i + 1600) / 16000:
        rclpy.spin_once(node, timeout_sec=0.01)
    msg = AudioChunk(sample_rate=16000, channels=1, data=audio[i:i + 1600].astype(np.float32).tolist())
    msg.header.stamp = sec_to_stamp(t0 + i / 16000)
    pub.publish(msg)
t_stop = time.monotonic() + 1.0
while time.monotonic() < t_stop:
    rclpy.spin_once(node, timeout_sec=0.05)
json.dump({"said": [[t - w0, s] for t, s in said]}, open(sys.argv[2], "w"))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh not set up")
def test_responder_node_over_dds(ros_domain_id, tmp_path, tts):
    """user/audio in real time -> responder (energy VAD, a script of two lines) -> agent/say after each pause."""
    audio, spans = conversation(tts, [("pause", 0.5), ("say", "Good morning, how are you today?"), ("pause", 2.0),
                                      ("say", "I was hoping we could talk."), ("pause", 2.0)])
    np.save(tmp_path / "audio.npy", audio)
    (tmp_path / "script.txt").write_text("# test\nFirst reply.\nSecond reply.\n")
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    node = subprocess.Popen(
        ["bash", "-c", f"source {ENV_SH} && exec python -X faulthandler -m timar_ros.responder --ros-args "
                       f"-p script:={tmp_path / 'script.txt'} -p vad_backend:=energy -p loop:=false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    missing = subprocess.Popen(  # a second responder whose script does not exist: configure fails, it stays up
        ["bash", "-c", f"source {ENV_SH} && exec python -X faulthandler -m timar_ros.responder --ros-args "
                       f"-r __node:=responder_missing -p script:={tmp_path / 'missing.txt'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        driver = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp_path / 'driver.py'} "
                                               f"{tmp_path / 'audio.npy'} {tmp_path / 'result.json'}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        out, out_missing = _stop(node), _stop(missing)
    assert driver.returncode == 0, driver.stdout + driver.stderr + "\n== responder\n" + out
    said = json.loads((tmp_path / "result.json").read_text())["said"]
    assert [s for _, s in said] == ["First reply.", "Second reply."], out
    # each after its user turn and the pause (times from the first sample, wall clock of the driver)
    for (t, _), (_, end) in zip(said, spans):
        assert t >= end - T0 + 0.7 - 0.05, (said, spans)
    assert "stand-in dialogue partner" in out
    assert node.returncode == 0, out
    assert missing.returncode == 0, out_missing  # alive until stopped, unconfigured
    assert f"responder script not found: {tmp_path / 'missing.txt'}" in out_missing


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return "(did not stop on SIGTERM)\n" + proc.communicate()[0]
