"""The talk graph end to end over real DDS, one process per node (`timar_run talk`): 12 s of the user's side of a
synthetic conversation -> responder -> speech_synth (sink none) -> agent (the shipped model) -> head_bridge ->
sim_head, recorded. The responder must have spoken after a user pause, speech_synth's agent/audio must be
contiguous within each utterance, and the agent's jaw must follow the robot's voice as the speaker plays it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
SECONDS = 12


@pytest.fixture
def talk_session(ros_domain_id, tmp_path):
    from timar_model.data.synth import generate_corpus

    tmp = tmp_path
    generate_corpus(tmp / "data", hours=0.0, seed=0, splits=("test",), clip_seconds=SECONDS, clips=1, workers=1,
                    progress=False)
    cfg = {
        "/**/conversation_player": {"ros__parameters": {"data_dir": str(tmp / "data" / "test"),
                                                        "max_turns": SECONDS}},
        "/**/bag_recorder": {"ros__parameters": {"output": str(tmp / "bag")}},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    run = subprocess.run(
        ["bash", "-c", f"source {ENV_SH} && exec timar_run talk --config {tmp / 'run.yaml'} "
                       f"--log-dir {tmp / 'logs'} --timeout 150"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=240,
    )
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp / "logs").glob("*.log")))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    return tmp, logs


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
def test_the_robot_replies_after_a_pause_and_its_jaw_follows_its_voice(talk_session):
    from timar_model.eval.bag_eval import evaluate, read_bag, read_speech, speech_report
    from timar_model.runtime.responder import ResponderConfig
    from timar_model.runtime.vad import VadConfig, VoiceActivity

    tmp, logs = talk_session
    data, speech = read_bag(tmp / "bag"), read_speech(tmp / "bag")
    assert speech is not None, logs
    says = [(t, text) for t, text in speech.say if text.strip()]
    assert says, logs
    assert "stand-in reply" in logs

    # the user had spoken and then paused for `pause` s before the first reply (user audio as recorded)
    pause = ResponderConfig().pause
    vad = VoiceActivity(VadConfig(min_silence=pause))
    events = vad.feed(speech.user_audio, speech.user_t0) + vad.finish()
    t_say = says[0][0]
    ends = [e.stamp for e in events if e.kind == "end" and e.stamp + pause <= t_say]
    assert ends, (events, t_say)
    assert not [e for e in events if e.kind == "start" and ends[-1] < e.stamp < ends[-1] + pause]

    report = evaluate(data)
    assert report["dropped_turns"] == 0
    r = speech_report(speech, data)
    assert r["utterances_with_audio"] >= 1 and r["speech_seconds"] > 0.5
    # speech_synth's chunks join sample-exactly within each utterance
    co = r["continuity"]
    assert co["gaps"] == 0 and co["overlaps"] == 0 and co["samples_match_status"], co
    # the jaw opens with the robot's voice as the speaker plays it
    assert r["jaw"]["talking_frames"] >= 25
    assert r["jaw"]["correlation_talking"] > 0.0, r["jaw"]
    assert r["jaw"]["mean_jaw_talking_rad"] > r["jaw"]["mean_jaw_silent_rad"], r["jaw"]
    assert np.isfinite(r["sync"]["lag_ms"])
