"""`timar eval-bag` speech measurements (bag_eval.read_speech / speech_report) on synthetic talk-session bags
written here (no ROS needed): the jaw follows the played speech with a known lag, three utterances with known
say -> speaker latencies, one of them cancelled, and chunk defects where a test wants them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

SR = 16000
T0, DELAY, TURNS, CHUNK = 100.0, 1.25, 9, 1600
# (say bag time, first chunk stamp, samples synthesised, samples played, final state, text)
UTTERANCES = [
    (101.0, 101.2, 24480, 24480, "done", "Hello there."),  # 15 chunks + one of 480
    (103.5, 103.8, 32000, 12800, "cancelled", "How are you?"),  # cut after 8 chunks
    (105.0, 105.1, 16000, 16000, "done", "Nice weather."),  # 10 chunks
]
CANCEL_AT = 104.3  # bag time of the cancel (an empty say) and of the cancelled status


def speech_audio(n: int, seed: int) -> np.ndarray:
    """Noise under a random syllable-like envelope, (n,) float32."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(n // 160 + 2)
    hann = np.hanning(9)
    env = np.convolve(raw, hann / hann.sum(), mode="same") ** 2
    env = np.repeat(0.02 + env / env.max(), 160)[:n]
    return (0.3 * env * rng.standard_normal(n)).astype(np.float32)


def played(chunks: list[tuple[float, np.ndarray]], t: np.ndarray, width: float) -> np.ndarray:
    """RMS of what the speaker plays over [t, t + width) for each t."""
    out = np.zeros(t.size)
    for i, a in enumerate(t):
        acc, n = 0.0, round(width * SR)
        for stamp, x in chunks:
            s = stamp + DELAY
            lo, hi = max(a, s), min(a + width, s + x.size / SR)
            if hi > lo:
                i0 = round((lo - s) * SR)
                i1 = round((hi - s) * SR)
                acc += float(np.sum(np.square(x[i0:i1], dtype=np.float64)))
        out[i] = np.sqrt(acc / n)
    return out


def write_bag(path: Path, lag: float, defects: bool = False) -> dict:
    """A talk session bag; the jaw shown at s opens with the speaker's sound over [s - lag, s - lag + 40 ms)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    ts = timar_typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    HeadMotion, AudioChunk = T["timar_msgs/msg/HeadMotion"], T["timar_msgs/msg/AudioChunk"]
    String, Bool = T["std_msgs/msg/String"], T["std_msgs/msg/Bool"]
    KeyValue, Status = T["diagnostic_msgs/msg/KeyValue"], T["diagnostic_msgs/msg/DiagnosticStatus"]
    Array = T["diagnostic_msgs/msg/DiagnosticArray"]

    def ns(t: float) -> int:
        return int(round(t * 1e9))

    def hdr(t: float, frame_id: str = "x"):
        return Header(stamp=Time(sec=ns(t) // 10**9, nanosec=ns(t) % 10**9), frame_id=frame_id)

    def status(name: str, values: dict):
        return Array(header=hdr(T0), status=[Status(level=0, name=name, message="", hardware_id="timar",
                                                    values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])])

    chunks: list[tuple[float, np.ndarray, float]] = []  # (stamp, samples, bag time)
    for k, (said, start, n, n_played, _, _) in enumerate(UTTERANCES):
        audio = speech_audio(n, seed=k)[:n_played]
        stamp = start
        for i in range(0, n_played, CHUNK):
            x = audio[i:i + CHUNK]
            if defects and k == 1 and i + CHUNK >= n_played:
                x = x[:800]  # the cancelled utterance's last chunk is cut inside
            if defects and k == 2 and i == 4 * CHUNK:
                stamp += 0.010  # a 10 ms gap
            if defects and k == 2 and i == 7 * CHUNK:
                stamp -= 0.005  # a 5 ms overlap
            chunks.append((stamp, x, max(said, stamp - 0.3)))
            stamp += x.size / SR
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = {name: w.add_connection(name, kind, typestore=ts) for name, kind in (
            ("/agent/head_motion", "timar_msgs/msg/HeadMotion"), ("/agent/audio", "timar_msgs/msg/AudioChunk"),
            ("/user/audio", "timar_msgs/msg/AudioChunk"), ("/agent/say", "std_msgs/msg/String"),
            ("/agent/speaking", "std_msgs/msg/Bool"), ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"))}
        msgs = []
        stamps = T0 + DELAY + np.arange(TURNS * 25) / 25
        jaw = 0.2 * played([(s, x) for s, x, _ in chunks], stamps - lag, 0.04)
        for f, (s, j) in enumerate(zip(stamps, jaw)):
            m = HeadMotion(header=hdr(s), expression=np.zeros(50, np.float32),
                           jaw_pose=np.array([j, 0, 0], np.float32), head_rotation=np.zeros(3, np.float32),
                           turn_index=f // 25, frame_index=f % 25)
            msgs.append((s - 0.1, conn["/agent/head_motion"], m))
        for stamp, x, recv in chunks:
            a = AudioChunk(header=hdr(stamp, "speech_synth"), sample_rate=SR, channels=1, data=x)
            msgs.append((recv, conn["/agent/audio"], a))
        other = AudioChunk(header=hdr(T0, "agent_tts"), sample_rate=SR, channels=1, data=np.ones(1600, np.float32))
        msgs.append((T0, conn["/agent/audio"], other))  # not speech_synth's: ignored
        user = AudioChunk(header=hdr(T0, "user"), sample_rate=SR, channels=1,
                          data=speech_audio(2 * SR, seed=9))
        msgs.append((T0 + 2, conn["/user/audio"], user))
        msgs.append((T0, conn["/diagnostics"], status("timar/agent", {"output_delay": DELAY})))
        for k, (said, start, n, n_played, state, text) in enumerate(UTTERANCES):
            msgs.append((said, conn["/agent/say"], String(data=text)))
            base = {"utterance": k, "text": text, "reason": ""}
            msgs.append((said, conn["/diagnostics"], status("timar/speech_synth",
                                                            {**base, "state": "queued", "audio_s": 0})))
            msgs.append((start, conn["/diagnostics"], status("timar/speech_synth",
                                                             {**base, "state": "playing", "audio_s": n / SR})))
            end_at = CANCEL_AT if state == "cancelled" else start + n_played / SR + DELAY
            reason = "barge-in: the user started speaking" if state == "cancelled" else ""
            msgs.append((end_at, conn["/diagnostics"], status("timar/speech_synth", {
                **base, "state": state, "audio_s": f"{n_played / SR:.6g}", "reason": reason})))
            msgs.append((start + DELAY, conn["/agent/speaking"], Bool(data=True)))
            msgs.append((start + DELAY + n_played / SR, conn["/agent/speaking"], Bool(data=False)))
        msgs.append((CANCEL_AT, conn["/agent/say"], String(data="")))
        msgs.append((T0 + 5, conn["/diagnostics"], status("timar/speech_synth", {"said": 3, "chunks": len(chunks)})))
        for t, c, m in sorted(msgs, key=lambda r: r[0]):
            w.write(c, ns(t), ts.serialize_cdr(m, c.msgtype))
    return {"chunks": chunks}


@pytest.mark.parametrize("lag", [0.0, 0.06, -0.03])
def test_lip_sync_lag_jaw_and_latency(tmp_path, lag):
    from timar_model.eval.bag_eval import format_speech_report, read_bag, read_speech, speech_report

    write_bag(tmp_path / "bag", lag)
    speech = read_speech(tmp_path / "bag")
    assert speech is not None and len(speech.say) == 4 and len(speech.utterances) == 3
    assert all(c.stamp > T0 for c in speech.chunks)  # the player's agent_tts chunk is not the robot's voice
    r = speech_report(speech, read_bag(tmp_path / "bag"))
    assert r["output_delay_s"] == DELAY and r["said"] == 3 and r["cancel_requests"] == 1
    assert r["utterance_states"] == {"done": 2, "cancelled": 1} and r["utterances_with_audio"] == 3
    # (a) the lag of the jaw behind the sound, within 5 ms
    assert r["sync"]["lag_ms"] == pytest.approx(1e3 * lag, abs=5.0)
    assert r["sync"]["peak_correlation"] > 0.95
    # (b) the jaw follows the speech while talking and rests while silent
    j = r["jaw"]
    assert j["talking_frames"] > 50 and j["silent_frames"] > 25
    assert j["mean_jaw_silent_rad"] == pytest.approx(0.0, abs=1e-6) and j["mean_jaw_talking_rad"] > 0.005
    if lag == 0.0:
        assert j["correlation_talking"] > 0.99
    # (c) say -> first sample at the speaker: first stamp + output delay - say bag time
    latencies = np.array([start + DELAY - said for said, start, *_ in UTTERANCES])
    lat = r["latency_say_to_speaker"]
    assert lat["utterances"] == 3
    assert lat["median_ms"] == pytest.approx(1e3 * np.median(latencies), abs=1e-3)
    assert lat["p95_ms"] == pytest.approx(1e3 * np.percentile(latencies, 95), abs=1e-3)
    # (d) contiguous chunks; the cancelled utterance ends at a chunk boundary
    co = r["continuity"]
    assert co["gaps"] == 0 and co["overlaps"] == 0 and co["chunk_samples"] == CHUNK and co["samples_match_status"]
    assert co["chunks"] == 16 + 8 + 10
    (c,) = r["cancelled"]
    assert c["utterance"] == 1 and c["ends_at_chunk_boundary"] and "barge-in" in c["reason"]
    start = UTTERANCES[1][1]
    assert c["speaker_silent_after_cancel_ms"] == pytest.approx(1e3 * (start + 0.8 + DELAY - CANCEL_AT), abs=1e-3)
    text = format_speech_report(r)
    assert "lip sync: the jaw lags the sound at the speaker by" in text and "ends at a chunk boundary True" in text


def test_gaps_overlaps_and_a_cut_inside_a_chunk_are_found(tmp_path):
    from timar_model.eval.bag_eval import read_bag, read_speech, speech_report

    write_bag(tmp_path / "bag", 0.0, defects=True)
    r = speech_report(read_speech(tmp_path / "bag"), read_bag(tmp_path / "bag"))
    co = r["continuity"]
    assert co["gaps"] == 1 and co["overlaps"] == 1
    assert co["max_abs_step_us"] == pytest.approx(10_000.0, abs=1.0)
    assert not co["samples_match_status"]  # the cancelled one's status says 0.8 s, its chunks hold 0.75 s
    assert not r["cancelled"][0]["ends_at_chunk_boundary"]


def test_eval_bag_command_shows_the_speech_section(tmp_path, capsys):
    from timar_model.eval.bag_eval import add_arguments, plot_speech, read_bag, read_speech, run, speech_report

    write_bag(tmp_path / "bag", 0.04)
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert run(ap.parse_args([str(tmp_path / "bag"), "--json", str(tmp_path / "r.json")])) == 0
    assert "latency agent/say -> first sample at the speaker over 3 utterances" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["speech"]["sync"]["lag_ms"] == pytest.approx(40.0, abs=5.0)
    speech, data = read_speech(tmp_path / "bag"), read_bag(tmp_path / "bag")
    png = plot_speech(speech, data, speech_report(speech, data), tmp_path / "speech.png")
    assert png.stat().st_size > 10_000


def test_a_bag_without_the_robots_voice_has_no_speech_section(tmp_path):
    """The replay demo's bag: agent/audio from the player only (frame_id agent_tts), no agent/say."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import read_speech, timar_typestore

    ts = timar_typestore()
    T = ts.types
    chunk = T["timar_msgs/msg/AudioChunk"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=100, nanosec=0),
                                        frame_id="agent_tts"),
        sample_rate=SR, channels=1, data=np.zeros(1600, np.float32))
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection("/agent/audio", "timar_msgs/msg/AudioChunk", typestore=ts)
        w.write(c, 100 * 10**9, ts.serialize_cdr(chunk, c.msgtype))
    assert read_speech(tmp_path / "bag") is None
